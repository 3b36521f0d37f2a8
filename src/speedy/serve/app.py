"""The HTTP JSON API of one model: a route for its task type, a health route, and an OpenAPI schema.

Every request carries a list of ``inputs`` (one or more), answered in order; requests that arrive together are
batched (see ``batcher.py``). Limits are settings: a text longer than ``max_chars`` or more than ``max_items``
inputs is answered 413; a malformed body, a wrong type, an empty string or a body that is not UTF-8 is answered
422; every error is a JSON object ``{"error": ..., "detail": ...}``, never a crash.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from speedy.serve.batcher import DynamicBatcher
from speedy.serve.predictor import Predictor


@dataclass
class ServeSettings:
    engine: str = "onnx-int8"
    max_chars: int = 2000  # per text (a context, for QA)
    max_items: int = 64  # inputs per request
    max_batch: int = 32  # inputs per model call
    max_wait_ms: float = 5.0  # how long the first input of a batch waits for company
    threads: int | None = None


class Error(BaseModel):
    error: str
    detail: str | list | dict | None = None


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only white space")
    return value


class TextItem(BaseModel):
    text: str = Field(description="The text (classification), or the sentence, words split on white space (tagging).")
    text_pair: str | None = Field(None, description="Classification of pairs: the second text.")

    _check_text = field_validator("text")(_not_blank)

    @field_validator("text_pair")
    @classmethod
    def _pair(cls, value):
        return None if value is None else _not_blank(value)


class QAItem(BaseModel):
    question: str
    context: str

    _check = field_validator("question", "context")(_not_blank)


class TextRequest(BaseModel):
    inputs: list[TextItem] = Field(min_length=1)


class QARequest(BaseModel):
    inputs: list[QAItem] = Field(min_length=1)


class Classified(BaseModel):
    label: str
    score: float
    scores: dict[str, float]


class Tagged(BaseModel):
    words: list[str]
    tags: list[str]


class Answer(BaseModel):
    answer: str | None
    start: int | None
    end: int | None
    score: float | None


class ClassifyResponse(BaseModel):
    results: list[Classified]


class TagResponse(BaseModel):
    results: list[Tagged]


class AnswerResponse(BaseModel):
    results: list[Answer]


class Health(BaseModel):
    status: str
    task: str
    engine: str
    model: str
    labels: list[str]
    batches: int
    items: int
    largest_batch: int


ERRORS = {413: {"model": Error, "description": "A text longer than max_chars, or more than max_items inputs"},
          422: {"model": Error, "description": "A malformed body, a wrong type, an empty string, invalid UTF-8"}}


def _error(status: int, error: str, detail=None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


def create_app(model_dir: str | Path, settings: ServeSettings | None = None, predictor: Predictor | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    predictor = predictor or Predictor(model_dir, settings.engine, settings.threads)
    batcher = DynamicBatcher(predictor.run_batch, settings.max_batch, settings.max_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        yield
        await batcher.stop()  # after the server has stopped taking requests: those under way still finish

    app = FastAPI(title=f"speedy: {Path(model_dir).name}", version="1",
                  description=f"A {predictor.task.type} model served by speedy ({settings.engine}).",
                  lifespan=lifespan)
    app.state.batcher, app.state.predictor, app.state.settings = batcher, predictor, settings

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, error: RequestValidationError):
        detail = [{"loc": list(e.get("loc", [])), "msg": str(e.get("msg", ""))} for e in error.errors()]
        return _error(422, "invalid request", json.loads(json.dumps(detail, default=str)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, error: StarletteHTTPException):
        status = 422 if error.status_code == 400 else error.status_code  # FastAPI says 400 for undecodable bodies
        return _error(status, str(error.detail))

    @app.middleware("http")
    async def utf8_only(request: Request, call_next):
        if request.method == "POST":
            body = await request.body()
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as error:
                return _error(422, "invalid request", f"the body is not UTF-8 (byte {error.start})")
        return await call_next(request)

    def too_large(texts: list[str], count: int) -> JSONResponse | None:
        if count > settings.max_items:
            return _error(413, "too many inputs", f"{count} inputs; at most {settings.max_items} per request")
        longest = max(len(t) for t in texts)
        if longest > settings.max_chars:
            return _error(413, "text too long", f"{longest} characters; at most {settings.max_chars}")
        return None

    @app.get("/health", response_model=Health)
    async def health():
        stats = batcher.stats
        return Health(status="ok", task=predictor.task.type, engine=settings.engine, model=str(model_dir),
                      labels=predictor.task.labels, batches=stats.batches, items=stats.items,
                      largest_batch=stats.largest)

    if predictor.task.type == "classification":
        @app.post("/classify", response_model=ClassifyResponse, responses=ERRORS)
        async def classify(request: TextRequest):
            """Classify each text (or pair of texts)."""
            texts = [i.text for i in request.inputs] + [i.text_pair for i in request.inputs if i.text_pair]
            refused = too_large(texts, len(request.inputs))
            if refused:
                return refused
            return {"results": await batcher.submit([(i.text, i.text_pair) for i in request.inputs])}

    elif predictor.task.type == "tagging":
        @app.post("/tag", response_model=TagResponse, responses=ERRORS)
        async def tag(request: TextRequest):
            """Tag each sentence: one tag per word (words are split on white space)."""
            refused = too_large([i.text for i in request.inputs], len(request.inputs))
            if refused:
                return refused
            return {"results": await batcher.submit([i.text.split() for i in request.inputs])}

    else:
        @app.post("/answer", response_model=AnswerResponse, responses=ERRORS)
        async def answer(request: QARequest):
            """Answer each question with a span of its context."""
            refused = too_large([t for i in request.inputs for t in (i.question, i.context)], len(request.inputs))
            if refused:
                return refused
            return {"results": await batcher.submit([(i.question, i.context) for i in request.inputs])}

    return app
