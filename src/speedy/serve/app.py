"""The HTTP JSON API of one model: a route for its task type, a health route, and an OpenAPI schema.

The route, its request and its answer are what the task type declares (``Task.route``, ``inputs``, ``results``):
this module builds their schemas from those declarations, for any type.

Every request carries a list of ``inputs`` (one or more), answered in order; requests that arrive together are
batched (see ``batcher.py``); each request succeeds or fails on its own, whatever else shares its batch. Limits
are settings: a text longer than ``max_chars``, more than ``max_items`` inputs or a body over ``max_body_bytes``
is answered 413; a malformed body, a wrong type, an empty string, a body that is not UTF-8 or an input the model
cannot take (a question that fills its window) is answered 422; every error is a JSON object
``{"error": ..., "detail": ...}``, never a crash. ``server_options`` are uvicorn's settings for the connections:
bounded headers, and a deadline for each request's headers and body.
"""

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import h11
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from speedy.errors import SpeedyError
from speedy.predictor import open_predictor
from speedy.runtime.fields import InputError
from speedy.serve.batcher import DynamicBatcher, InputFailed


@dataclass
class ServeSettings:
    engine: str = "onnx-int8"
    max_chars: int = 2000  # per text (a context, for QA)
    max_items: int = 64  # inputs per request
    max_batch: int = 32  # inputs gathered per batch
    max_batch_tokens: int = 8192  # padded tokens per model call (ONNX engines): a batch is cut by length
    max_wait_ms: float = 5.0  # how long the first input of a batch waits for company
    threads: int | None = None
    max_body_bytes: int | None = None  # None: room for max_items inputs at their longest (see below)
    max_header_bytes: int = 16384  # the request line and headers (431 past it)
    idle_seconds: float = 5.0  # a kept-alive connection with no new request is closed after this
    read_seconds: float = 30.0  # a request's headers, then its body, must arrive within this, else it is closed

    def __post_init__(self):
        if self.max_body_bytes is None:
            # max_items inputs of two texts (a pair; a question and its context) of max_chars characters, each
            # character at most 12 bytes of JSON (an escaped surrogate pair), and room for keys and white space
            self.max_body_bytes = self.max_items * (2 * 12 * self.max_chars + 256) + 4096


class Error(BaseModel):
    error: str
    detail: str | list | dict | None = None


def _schema_name(task) -> str:
    """The prefix of the route's schemas in the OpenAPI document (``/classify``: ``ClassifyRequest``...)."""
    return task.route.strip("/").title().replace("-", "").replace("_", "")


# A character that is not white space, spelt out: "\S" means other sets in the validator's regex engine (Rust's, with
# U+0085), in the schema's (ECMAScript's: with U+FEFF) and in Python's (with U+001C-U+001F), so a schema-valid text
# could be refused. This class is the union of the three, written the same for each.
NOT_BLANK = (r"[^\t-\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]")


def request_model(settings: ServeSettings, task) -> type[BaseModel]:
    """The request body of ``task``'s route, from its ``inputs``, with the limits of ``settings`` in its schema (so
    fuzzing knows them): a text has a non-space character and at most ``max_chars`` characters; a request has 1
    to ``max_items`` inputs. Over a maximum is answered 413 by the route (payload too large), anything else
    invalid 422 by validation."""
    Text = Annotated[str, Field(min_length=1, pattern=NOT_BLANK, json_schema_extra={"maxLength": settings.max_chars})]
    fields = {name: (Text, Field(description=field.description)) if field.required else
              (Text | None, Field(None, description=field.description)) for name, field in task.inputs.items()}
    item = create_model(f"{_schema_name(task)}Input", **fields)
    count = {"min_length": 1, "json_schema_extra": {"maxItems": settings.max_items}}
    return create_model(f"{_schema_name(task)}Request", inputs=(list[item], Field(**count)))


def response_model(task) -> type[BaseModel]:
    """The answer of ``task``'s route: one result per input, with the fields its ``results`` declares."""
    result = create_model(f"{_schema_name(task)}Result", **{name: (kind, ...) for name, kind in task.results.items()})
    return create_model(f"{_schema_name(task)}Response", results=(list[result], ...))


class Health(BaseModel):
    status: str
    task: str
    engine: str
    model: str
    labels: list[str]
    batches: int
    items: int
    largest_batch: int


ERRORS = {413: {"model": Error, "description": "A text longer than max_chars, more than max_items inputs, or a "
                                              "body over max_body_bytes"},
          422: {"model": Error, "description": "A malformed body, a wrong type, an empty string, invalid UTF-8, or "
                                              "an input the model cannot take"}}


def _error(status: int, error: str, detail=None, headers=None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


class RequestLimits:
    """Checks each request's headers (431 past ``header_bytes``: h11 bounds only a head still incomplete, so one
    that arrives whole in one read gets past it), then reads its body before the app does: at most ``body_bytes``
    (413 as soon as the Content-Length or the bytes received pass it, without reading on), within ``seconds``
    (408: a client that stops half-way does not hold a connection). These answers close the connection, so the
    rest of the body is never read. The app gets the body from memory: it reads it whole anyway, to parse the
    JSON. (FastAPI's ``max_body_size`` answers 413 in plain text and keeps the connection, so uvicorn goes on
    reading the rest; and it has no deadline.)"""

    def __init__(self, app, header_bytes: int, body_bytes: int, seconds: float):
        self.app, self.header_bytes, self.max_bytes, self.seconds = app, header_bytes, body_bytes, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        head = len(scope.get("raw_path") or b"") + len(scope["query_string"]) + sum(
            len(name) + len(value) + 4 for name, value in scope["headers"])  # ": " and CRLF
        if head > self.header_bytes:
            return await _error(431, "request headers too large", f"more than {self.header_bytes} bytes",
                                {"connection": "close"})(scope, receive, send)
        too_large = _error(413, "body too large", f"more than {self.max_bytes} bytes", {"connection": "close"})
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large(scope, receive, send)
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.seconds):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return  # the client is gone: nobody to answer
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > self.max_bytes or not message.get("more_body", False):
                        break
        except TimeoutError:
            late = f"the body did not arrive within {self.seconds:g} s"
            return await _error(408, "request timeout", late, {"connection": "close"})(scope, receive, send)
        if size > self.max_bytes:
            return await too_large(scope, receive, send)
        body = b"".join(chunks)

        async def replay():
            nonlocal body
            if body is None:
                return await receive()  # after the body: a disconnect, when it comes
            message, body = {"type": "http.request", "body": body, "more_body": False}, None
            return message

        await self.app(scope, replay, send)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's line and headers (``head_seconds``, from when
    the connection waits for them). uvicorn closes a kept-alive connection that stays silent, but not a new
    connection that sends nothing, nor one that sends its headers a byte at a time: those it holds forever. It
    also answers a malformed request with a plain-text 400; here it is the API's JSON error (431 for headers
    over ``h11_max_incomplete_event_size``). It uses uvicorn's internals: uvicorn is pinned."""

    head_seconds = 30.0
    head_timer = None

    def _watch_head(self) -> None:
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if waiting and self.head_timer is None:
            self.head_timer = self.loop.call_later(self.head_seconds, self.timeout_keep_alive_handler)
        elif not waiting and self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def connection_made(self, transport):
        super().connection_made(transport)
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()

    def connection_lost(self, exc) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        limit = self.config.h11_max_incomplete_event_size or 16384  # h11's default
        if len(self.conn.trailing_data[0]) > limit:
            status, error, msg = 431, "request headers too large", f"more than {limit} bytes"
        else:
            status, error = 400, "invalid HTTP request"
        body = json.dumps({"error": error, "detail": msg}).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(body))),
                   ("connection", "close")]
        for event in (h11.Response(status_code=status, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def server_options(settings: ServeSettings) -> dict:
    """uvicorn's settings (``uvicorn.run``, ``uvicorn.Config``) that bound what one connection may hold."""
    protocol = type("H11Protocol", (DeadlineH11Protocol,), {"head_seconds": settings.read_seconds})
    return {"http": protocol, "h11_max_incomplete_event_size": settings.max_header_bytes,
            "timeout_keep_alive": settings.idle_seconds}


def create_app(model_dir: str | Path, settings: ServeSettings | None = None, predictor=None) -> FastAPI:
    """The app of one model folder. ``predictor``: one opened already (``speedy.predictor.open_predictor``)."""
    settings = settings or ServeSettings()
    predictor = predictor or open_predictor(model_dir, settings.engine, settings.threads, settings.max_batch_tokens)
    batcher = DynamicBatcher(predictor.run_each, settings.max_batch, settings.max_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        yield
        await batcher.stop()  # after the server has stopped taking requests: those under way still finish

    app = FastAPI(title=f"speedy: {Path(model_dir).name}", version="1",
                  description=f"A {predictor.task.type} model served by speedy ({settings.engine}).",
                  lifespan=lifespan)
    app.state.batcher, app.state.predictor, app.state.settings = batcher, predictor, settings
    app.add_middleware(RequestLimits, header_bytes=settings.max_header_bytes, body_bytes=settings.max_body_bytes,
                       seconds=settings.read_seconds)
    _add_error_handlers(app)

    @app.get("/health", response_model=Health)
    async def health():
        stats = batcher.stats
        return Health(status="ok", task=predictor.task.type, engine=settings.engine,
                      model=Path(model_dir).resolve().name,  # its name only: a path tells about the server's disk
                      labels=predictor.task.labels, batches=stats.batches, items=stats.items,
                      largest_batch=stats.largest)

    _add_task_route(app, predictor.task, settings, batcher)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is one JSON object ``{"error", "detail"}``."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, error: RequestValidationError):
        detail = [{"loc": list(e.get("loc", [])), "msg": str(e.get("msg", ""))} for e in error.errors()]
        return _error(422, "invalid request", json.loads(json.dumps(detail, default=str)))

    @app.exception_handler(Exception)
    async def failed(_request, error: Exception):  # a bug or a model failure: still one JSON line, and logged
        logging.getLogger("speedy.serve").exception("request failed")
        return _error(500, "internal error", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, error: StarletteHTTPException):
        status = 422 if error.status_code == 400 else error.status_code  # FastAPI says 400 for undecodable bodies
        return _error(status, str(error.detail), headers=error.headers)  # e.g. 405 keeps its Allow header


def _too_large(settings: ServeSettings, texts: list[str], count: int) -> JSONResponse | None:
    if count > settings.max_items:
        return _error(413, "too many inputs", f"{count} inputs; at most {settings.max_items} per request")
    longest = max((len(t) for t in texts), default=0)
    if longest > settings.max_chars:
        return _error(413, "text too long", f"{longest} characters; at most {settings.max_chars}")
    return None


async def _answers(batcher: DynamicBatcher, items: list) -> JSONResponse:
    """The results of a request's inputs: 422 for an input the model cannot take (an ``InputError`` names its
    field), any other failure is a 500 for this request only (see ``batcher.py``)."""
    try:
        return JSONResponse({"results": await batcher.submit(items)})
    except InputFailed as refused:
        if not isinstance(refused.error, SpeedyError):  # a bug or a model failure
            raise refused.error from None
        where = f"inputs[{refused.index}]" + ("." if isinstance(refused.error, InputError) else ": ")
        return _error(422, "input the model cannot take", f"{where}{refused.error}")


def _add_task_route(app: FastAPI, task, settings: ServeSettings, batcher: DynamicBatcher) -> None:
    """The one route of the model's task. The handler returns its JSON directly: ``response_model`` still
    documents it (and the fuzzing tests check every answer against that schema), without validating each answer
    again."""
    Request = request_model(settings, task)

    async def handle(request: Request):
        fields = [item.model_dump() for item in request.inputs]
        texts = [text for item in fields for text in item.values() if text is not None]
        refused = _too_large(settings, texts, len(fields))
        return refused or await _answers(batcher, [task.input_item(item) for item in fields])

    name = task.route.strip("/")
    app.post(task.route, response_model=response_model(task), responses=ERRORS, name=name,
             description=task.route_help)(handle)
