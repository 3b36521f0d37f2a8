"""The HTTP JSON API of one model: a route for its task type, a health route, and an OpenAPI schema.

Every request carries a list of ``inputs`` (one or more), answered in order; requests that arrive together are
batched (see ``batcher.py``). Limits are settings: a text longer than ``max_chars`` or more than ``max_items``
inputs is answered 413; a malformed body, a wrong type, an empty string or a body that is not UTF-8 is answered
422; every error is a JSON object ``{"error": ..., "detail": ...}``, never a crash.
"""

import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from speedy.serve.batcher import DynamicBatcher
from speedy.predictor import Predictor


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


def request_models(settings: ServeSettings):
    """The request bodies, with the limits of ``settings`` in their schema (so fuzzing knows them): a text has a
    non-space character and at most ``max_chars`` characters; a request has 1 to ``max_items`` inputs. Over a
    maximum is answered 413 by the route (payload too large), anything else invalid 422 by validation."""
    Text = Annotated[str, Field(min_length=1, pattern=r"\S", json_schema_extra={"maxLength": settings.max_chars})]
    count = {"min_length": 1, "json_schema_extra": {"maxItems": settings.max_items}}

    class TextItem(BaseModel):
        text: Text = Field(description="The text.")
        text_pair: Text | None = Field(None, description="Classification of pairs: the second text.")

    class SentenceItem(BaseModel):
        text: Text = Field(description="The sentence; words are split on white space.")

    class QAItem(BaseModel):
        question: Text
        context: Text

    class TextRequest(BaseModel):
        inputs: list[TextItem] = Field(**count)

    class SentenceRequest(BaseModel):
        inputs: list[SentenceItem] = Field(**count)

    class QARequest(BaseModel):
        inputs: list[QAItem] = Field(**count)

    return TextRequest, SentenceRequest, QARequest


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


def _error(status: int, error: str, detail=None, headers=None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


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
    TextRequest, SentenceRequest, QARequest = request_models(settings)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, error: RequestValidationError):
        detail = [{"loc": list(e.get("loc", [])), "msg": str(e.get("msg", ""))} for e in error.errors()]
        return _error(422, "invalid request", json.loads(json.dumps(detail, default=str)))

    @app.exception_handler(Exception)
    async def failed(_request, error: Exception):  # a bug or a model failure: still one JSON line, and logged
        import logging

        logging.getLogger("speedy.serve").exception("request failed")
        return _error(500, "internal error", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, error: StarletteHTTPException):
        status = 422 if error.status_code == 400 else error.status_code  # FastAPI says 400 for undecodable bodies
        return _error(status, str(error.detail), headers=error.headers)  # e.g. 405 keeps its Allow header

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

    # Handlers return their JSON directly: ``response_model`` still documents it (and the fuzzing tests check every
    # answer against that schema), without validating each answer again at serving time.
    if predictor.task.type == "classification":
        @app.post("/classify", response_model=ClassifyResponse, responses=ERRORS)
        async def classify(request: TextRequest):
            """Classify each text (or pair of texts)."""
            texts = [i.text for i in request.inputs] + [i.text_pair for i in request.inputs if i.text_pair]
            refused = too_large(texts, len(request.inputs))
            if refused:
                return refused
            return JSONResponse({"results": await batcher.submit([(i.text, i.text_pair) for i in request.inputs])})

    elif predictor.task.type == "tagging":
        @app.post("/tag", response_model=TagResponse, responses=ERRORS)
        async def tag(request: SentenceRequest):
            """Tag each sentence: one tag per word (words are split on white space)."""
            refused = too_large([i.text for i in request.inputs], len(request.inputs))
            if refused:
                return refused
            return JSONResponse({"results": await batcher.submit([i.text.split() for i in request.inputs])})

    else:
        @app.post("/answer", response_model=AnswerResponse, responses=ERRORS)
        async def answer(request: QARequest):
            """Answer each question with a span of its context."""
            refused = too_large([t for i in request.inputs for t in (i.question, i.context)], len(request.inputs))
            if refused:
                return refused
            return JSONResponse({"results": await batcher.submit([(i.question, i.context) for i in request.inputs])})

    return app
