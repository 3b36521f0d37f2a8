"""The server under bad neighbours and bad clients: an input that fails, fails its own request only; a body too
large is refused while it is read; headers are bounded; silent and half-sent connections are closed; /health
names the model without revealing where it lives."""

from __future__ import annotations

import asyncio
import http.client
import json
import select
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")

from starlette.testclient import TestClient  # noqa: E402

from conftest import serving, speedy_model  # noqa: E402
from speedy.errors import SpeedyError  # noqa: E402
from speedy.predictor import Predictor  # noqa: E402
from speedy.serve.app import ServeSettings, create_app  # noqa: E402

# a long batching window: requests sent together share one batch
TOGETHER = ServeSettings(engine="torch", max_batch=16, max_wait_ms=300)
# short deadlines, small bodies and headers: what the connection tests probe
TIGHT = ServeSettings(engine="torch", max_chars=200, max_items=4, max_wait_ms=2, max_header_bytes=4096,
                      idle_seconds=0.5, read_seconds=2)
CONTEXT = ("El equipo ganó el partido ayer en el estadio de la ciudad. La ministra aprobó la ley en el congreso. "
           "El delantero marcó un gol y el árbitro habló con el entrenador. La portera jugó en el estadio. ") * 3


@pytest.fixture(scope="module")
def models(tmp_path_factory, bert_dir):
    root = tmp_path_factory.mktemp("served-limits")
    return {task: speedy_model(bert_dir, task, root / task) for task in ("classification", "tagging", "qa")}


def post_together(app, path: str, bodies: list[dict]) -> list:
    """The answers to ``bodies`` POSTed at once (they are batched together)."""
    import httpx

    async def burst():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500 is an answer too
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await asyncio.gather(*[client.post(path, json=body) for body in bodies])

    return asyncio.run(burst())


def test_a_question_longer_than_the_window_fails_its_own_request_only(models):
    app = create_app(models["qa"], TOGETHER)
    good = {"question": "¿Quién ganó el partido?", "context": CONTEXT}
    long_question = "¿" + "el equipo ganó el partido en el estadio " * 8 + "?"
    responses = post_together(app, "/answer", [{"inputs": [good]}, {"inputs": [{"question": long_question,
                                                                                "context": CONTEXT}]},
                                               {"inputs": [good, good | {"question": long_question}]}])
    assert responses[0].status_code == 200 and responses[0].json()["results"][0]["answer"]
    for response, index in ((responses[1], 0), (responses[2], 1)):
        assert response.status_code == 422 and set(response.json()) == {"error", "detail"}
        assert response.json()["detail"].startswith(f"inputs[{index}].question: longer than the model's window (64 "
                                                    "tokens)")


def test_an_answer_does_not_depend_on_the_questions_batched_with_it(models):
    """The overlap of a long context's windows must not follow the longest question of the batch."""
    app = create_app(models["qa"], TOGETHER)
    mine = {"question": "¿Quién ganó?", "context": CONTEXT}
    neighbour = {"question": "¿" + "el equipo ganó el partido " * 5 + "?", "context": "El equipo ganó."}
    alone = post_together(app, "/answer", [{"inputs": [mine]}])[0].json()["results"][0]
    batched = post_together(app, "/answer", [{"inputs": [mine]}, {"inputs": [neighbour]}])
    assert batched[1].status_code == 200
    mine_batched = batched[0].json()["results"][0]
    assert [mine_batched[k] for k in ("answer", "start", "end")] == [alone[k] for k in ("answer", "start", "end")]
    assert mine_batched["score"] == pytest.approx(alone["score"], abs=1e-4)


class Fragile:
    """A predictor whose whole model call fails on an input with a "💥" (a bug) or a "🚫" (an input the task
    refuses) in it."""

    def __init__(self, predictor: Predictor):
        self.inner, self.task = predictor, predictor.task

    def run_each(self, items: list) -> list:
        if "💥" in json.dumps(items, ensure_ascii=False):
            raise RuntimeError("the model cannot take this input")
        if "🚫" in json.dumps(items, ensure_ascii=False):
            raise SpeedyError("the task refuses this input")
        return self.inner.run_each(items)


@pytest.mark.parametrize("task, path", [("classification", "/classify"), ("tagging", "/tag")])
def test_an_input_the_model_fails_on_fails_its_own_request_only(models, task, path):
    app = create_app(models[task], TOGETHER, predictor=Fragile(Predictor(models[task], "torch")))
    texts = ["El equipo ganó el partido.", "La ministra 💥 aprobó la ley.", "El delantero marcó un gol.", "🚫"]
    responses = post_together(app, path, [{"inputs": [{"text": t}]} for t in texts])
    assert [r.status_code for r in responses] == [200, 500, 200, 422]
    assert responses[1].json() == {"error": "internal error", "detail": "RuntimeError: the model cannot take this "
                                                                        "input"}
    assert responses[3].json() == {"error": "input the model cannot take",
                                   "detail": "inputs[0]: the task refuses this input"}
    assert app.state.batcher.stats.items == 2  # the two good ones, answered after the shared batch failed


def test_health_names_the_model_without_its_path(models):
    with TestClient(create_app(models["tagging"], TOGETHER)) as client:
        health = client.get("/health").json()
    assert health["model"] == models["tagging"].name and health["task"] == "tagging" and health["engine"] == "torch"
    assert not [value for value in health.values() if "/" in str(value) or "\\" in str(value)]


def test_default_body_limit_fits_the_largest_valid_request():
    settings = ServeSettings()
    widest = "😀" * settings.max_chars  # 12 bytes per character once JSON-escaped, as json.dumps does by default
    body = json.dumps({"inputs": [{"text": widest, "text_pair": widest}] * settings.max_items}, indent=2)
    assert len(body.encode()) <= settings.max_body_bytes <= 8 * 2**20


@pytest.fixture(scope="module")
def tight_port(models):
    with serving(create_app(models["classification"], TIGHT)) as port:
        yield port


def closed_within(raw: socket.socket, seconds: float) -> tuple[bytes, float | None]:
    """What the server sends until it closes the connection, and after how long (None: still open)."""
    start, received = time.monotonic(), b""
    while time.monotonic() - start < seconds:
        if select.select([raw], [], [], 0.05)[0]:
            try:
                chunk = raw.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return received, time.monotonic() - start
            received += chunk
    return received, None


def status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


HEAD = "POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(tight_port):
    with socket.create_connection(("127.0.0.1", tight_port)) as raw:
        raw.sendall(f"{HEAD}Content-Length: 200000000\r\n\r\n".encode())
        answer, after = closed_within(raw, 5)
    assert after is not None and status_and_json(answer) == (413, {"error": "body too large",
                                                                   "detail": f"more than {TIGHT.max_body_bytes} bytes"})


def test_a_chunked_body_is_refused_once_it_passes_the_limit(tight_port):
    chunk = b"x" * 4096
    with socket.create_connection(("127.0.0.1", tight_port)) as raw:
        raw.sendall(f"{HEAD}Transfer-Encoding: chunked\r\n\r\n".encode())
        for _ in range(TIGHT.max_body_bytes // len(chunk) + 1):  # just past the limit, and the body never ends
            raw.sendall(b"1000\r\n" + chunk + b"\r\n")
        answer, after = closed_within(raw, 5)
    assert after is not None and status_and_json(answer)[0] == 413


def test_a_chunked_body_within_the_limit_is_answered(tight_port):
    body = json.dumps({"inputs": [{"text": "El equipo ganó el partido."}]}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", tight_port, timeout=10)
    connection.request("POST", "/classify", body=iter([body[:10], body[10:]]), encode_chunked=True,
                       headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    response = connection.getresponse()
    assert response.status == 200 and len(json.loads(response.read())["results"]) == 1
    connection.close()


@pytest.mark.parametrize("pieces", [1, 10])  # whole in one read, or still incomplete when it passes the limit
def test_headers_over_the_limit_get_431(tight_port, pieces):
    head = f"{HEAD}X-Padding: {'a' * 8000}\r\nContent-Length: 2\r\n\r\n{{}}".encode()
    size = len(head) // pieces + 1
    with socket.create_connection(("127.0.0.1", tight_port)) as raw:
        try:
            for start in range(0, len(head), size):
                raw.sendall(head[start : start + size])
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end
        answer, after = closed_within(raw, 5)
    assert after is not None and status_and_json(answer) == (431, {"error": "request headers too large",
                                                                   "detail": "more than 4096 bytes"})


def test_a_malformed_request_gets_a_json_400(tight_port):
    with socket.create_connection(("127.0.0.1", tight_port)) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer, after = closed_within(raw, 5)
    status, error = status_and_json(answer)
    assert after is not None and status == 400 and error["error"] == "invalid HTTP request"


@pytest.mark.parametrize("send", [
    [],  # connects and says nothing
    [HEAD.encode()] + [b"X"] * 20,  # headers a byte at a time, never finished
])
def test_silent_and_slow_connections_are_closed(tight_port, send):
    with socket.create_connection(("127.0.0.1", tight_port)) as raw:
        start = time.monotonic()
        try:
            for piece in send:
                raw.sendall(piece)
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        _, after = closed_within(raw, 5)
    assert after is not None and time.monotonic() - start < TIGHT.read_seconds + 3


def test_a_body_that_stops_half_way_gets_408_and_the_connection_closed(tight_port):
    with socket.create_connection(("127.0.0.1", tight_port)) as raw:
        raw.sendall(f"{HEAD}Content-Length: 100\r\n\r\n{{\"inputs\": [".encode())
        answer, after = closed_within(raw, 5)
    assert after is not None and status_and_json(answer)[0] == 408


def test_an_idle_kept_alive_connection_is_closed(tight_port):
    body = json.dumps({"inputs": [{"text": "Hola."}]})
    with socket.create_connection(("127.0.0.1", tight_port)) as raw:
        raw.sendall(f"{HEAD}Content-Length: {len(body.encode())}\r\n\r\n{body}".encode())
        answer, after = closed_within(raw, TIGHT.read_seconds + 3)
    assert after is not None and after < TIGHT.read_seconds and answer.startswith(b"HTTP/1.1 200")
