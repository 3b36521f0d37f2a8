"""The HTTP API: each task's route, limits and bad input by hand, fuzzing against its own OpenAPI schema,
dynamic batching, a client that disconnects, and a clean shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("schemathesis")

import schemathesis  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from conftest import free_port, serving, speedy_model  # noqa: E402
from speedy.serve.app import ServeSettings, create_app  # noqa: E402

LIMITS = ServeSettings(engine="torch", max_chars=200, max_items=4, max_batch=8, max_wait_ms=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory, bert_dir):
    root = tmp_path_factory.mktemp("served")
    return {task: speedy_model(bert_dir, task, root / task) for task in ("classification", "tagging", "qa")}


@pytest.fixture(scope="module")
def clients(models):
    opened = {task: TestClient(create_app(folder, LIMITS)) for task, folder in models.items()}
    for client in opened.values():
        client.__enter__()  # runs the lifespan: the batcher starts
    yield opened
    for client in opened.values():
        client.__exit__(None, None, None)


def test_each_task_has_its_route_and_answers_in_order(clients):
    texts = ["El equipo ganó el partido.", "La ministra aprobó la ley."]
    response = clients["classification"].post("/classify", json={"inputs": [{"text": t} for t in texts]})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 2 and {r["label"] for r in results} <= {"deporte", "politica"}
    assert all(abs(sum(r["scores"].values()) - 1) < 1e-5 for r in results)
    pair = clients["classification"].post("/classify", json={"inputs": [{"text": "Hola.", "text_pair": "Adiós."}]})
    assert pair.status_code == 200

    sentence = "El delantero marcó un gol en el estadio ."
    tagged = clients["tagging"].post("/tag", json={"inputs": [{"text": sentence}]}).json()["results"][0]
    assert tagged["words"] == sentence.split() and len(tagged["tags"]) == len(sentence.split())

    context = "El equipo ganó el partido ayer en el estadio."
    answered = clients["qa"].post("/answer", json={"inputs": [{"question": "¿Quién ganó?", "context": context}]})
    answer = answered.json()["results"][0]
    assert answer["answer"] == context[answer["start"]:answer["end"]] and answer["answer"]

    health = clients["tagging"].get("/health").json()
    assert health["status"] == "ok" and health["task"] == "tagging" and health["items"] >= 1
    assert clients["tagging"].post("/classify", json={"inputs": [{"text": "Hola."}]}).status_code == 404
    paths = clients["qa"].get("/openapi.json").json()["paths"]
    assert set(paths) == {"/answer", "/health"}


@pytest.mark.parametrize("body, status, fragment", [
    ({"inputs": [{"text": "x" * 201}]}, 413, "text too long"),
    ({"inputs": [{"text": "Hola."}] * 5}, 413, "too many inputs"),
    ({"inputs": [{"text": ""}]}, 422, "at least 1 character"),
    ({"inputs": [{"text": " \t "}]}, 422, "should match pattern"),
    ({"inputs": [{"text": "\u0085\ufeff\x1c"}]}, 422, "should match pattern"),  # white space to one regex engine
    ({"inputs": [{"text": 5}]}, 422, "invalid request"),
    ({"inputs": []}, 422, "invalid request"),
    ({"text": "Hola."}, 422, "invalid request"),
    ({"inputs": [{"text": "Hola.", "text_pair": ""}]}, 422, "at least 1 character"),
])
def test_limits_and_bad_bodies_get_a_json_error(clients, body, status, fragment):
    response = clients["classification"].post("/classify", json=body)
    assert response.status_code == status
    assert fragment in json.dumps(response.json())
    assert set(response.json()) == {"error", "detail"}


@pytest.mark.parametrize("raw, content_type", [
    (b'{"inputs": [{"text": "Hola', "application/json"),  # malformed JSON
    (b'{"inputs": [{"text": "Ol\xe1"}]}', "application/json"),  # Latin-1, not UTF-8
    (b"not json at all", "text/plain"),
])
def test_malformed_and_non_utf8_bodies_get_422(clients, raw, content_type):
    response = clients["classification"].post("/classify", content=raw, headers={"content-type": content_type})
    assert response.status_code == 422
    assert "error" in response.json()
    assert clients["classification"].get("/health").status_code == 200  # and it keeps serving


def test_requests_arriving_together_are_batched(models):
    import httpx

    app = create_app(models["classification"], ServeSettings(engine="torch", max_batch=8, max_wait_ms=50))

    async def burst():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                texts = [f"El equipo ganó el partido {i}." for i in range(16)]
                responses = await asyncio.gather(*[client.post("/classify", json={"inputs": [{"text": t}]})
                                                   for t in texts])
                alone = await client.post("/classify", json={"inputs": [{"text": texts[3]}]})
        return responses, alone

    responses, alone = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    stats = app.state.batcher.stats
    assert stats.items == 17 and stats.largest > 1 and stats.batches < 17
    # batched or alone, an input gets the same answer (padding never changes the result)
    assert responses[3].json()["results"][0]["scores"] == pytest.approx(alone.json()["results"][0]["scores"], abs=1e-5)


fuzzed = schemathesis.pytest.from_fixture("fuzz_schema")


@pytest.fixture(params=["classification", "tagging", "qa"])
def fuzz_schema(request, models):
    """The API on a real uvicorn server on loopback (one event loop, the real HTTP stack, the connection settings
    of ``speedy serve``), fuzzed by URL."""
    running = serving(create_app(models[request.param], LIMITS))
    port = running.__enter__()
    request.addfinalizer(lambda: running.__exit__(None, None, None))
    # 413 (too large) is how this API rejects a text over maxLength or more inputs than maxItems
    config = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {
        "expected-statuses": [400, 404, 405, 413, 415, 422]}}})
    return schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json", config=config)


@fuzzed.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzing_against_the_openapi_schema(case):
    """Schema-valid and schema-violating bodies alike: never a 5xx, always a documented, schema-valid answer."""
    case.call_and_validate()



def _post(port, path, body, timeout=30):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


def test_server_survives_disconnects_and_finishes_requests_on_sigterm(models):
    port = free_port()
    # a long batching window keeps a request "under way" for about a second: time to send SIGTERM meanwhile
    server = subprocess.Popen([sys.executable, "-m", "speedy", "serve", str(models["classification"]), "--engine",
                               "torch", "--port", str(port), "--max-wait-ms", "1500"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        else:
            pytest.fail("the server did not start")
        body = json.dumps({"inputs": [{"text": "El equipo ganó."}]}).encode()
        for _ in range(3):  # clients that send a request and hang up before the answer
            with socket.create_connection(("127.0.0.1", port)) as raw:
                raw.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        with socket.create_connection(("127.0.0.1", port)) as raw:  # and one that hangs up mid-body
            raw.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 500\r\n\r\n{\"inputs\": [")
        status, _ = _post(port, "/classify", {"inputs": [{"text": "La ministra habló."}]})
        assert status == 200

        result = {}
        worker = threading.Thread(target=lambda: result.update(answer=_post(port, "/classify",
                                                                            {"inputs": [{"text": "Hola."}]})))
        worker.start()
        time.sleep(0.5)  # the request is waiting in its batching window
        server.send_signal(signal.SIGTERM)
        worker.join(timeout=30)
        assert result["answer"][0] == 200 and result["answer"][1]["results"][0]["label"] in ("deporte", "politica")
        # uvicorn finishes the requests under way, runs the app's shutdown, then re-raises SIGTERM on itself so
        # a supervisor sees the conventional status
        assert server.wait(timeout=30) in (0, -signal.SIGTERM)
        log = server.stdout.read()
        assert "Traceback" not in log and "Application shutdown complete" in log
    finally:
        if server.poll() is None:
            server.kill()
