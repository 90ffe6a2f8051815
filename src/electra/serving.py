"""`electra serve`: a fine-tuned model behind an HTTP JSON API (FastAPI + uvicorn, the `serve` extra).

The model folder is either a fine-tuned model (run by PyTorch) or its `electra export --format onnx`
folder (run by ONNX Runtime, the faster path for single short requests on CPUs).

POST /predict takes {"texts": [...]}, {"pairs": [[a, b], ...]}, for taggers {"tokens": [[w, ...], ...]}, or
for question answering {"questions": [{"context": ..., "question": ..., "id": ...}, ...]}, and answers
{"predictions": [...]} as `electra predict` writes them. Concurrent requests are gathered
into one batch (micro-batching: up to `max_batch_size` examples, waiting at most `batch_wait_ms` for
company), and the model runs in a worker thread so the event loop keeps accepting requests; where a shared batch
fails, its requests are rerun one by one so that only the failing ones get an error. Limits on the number of
examples, text length and body size are answered with 413, malformed requests (text that is not valid Unicode,
numbers JSON cannot hold, the wrong input for the model) with 422, each with a message saying what to change; a
body that is not JSON at all (invalid UTF-8, nesting too deep) gets FastAPI's 400. GET /health describes the
model; /docs is OpenAPI.

(No `from __future__ import annotations` here: FastAPI reads the request model from the annotations
of handlers defined inside `create_app`, which postponed annotations would hide.)
"""

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from electra.errors import UserError
from electra.export import OnnxPredictor, open_predictor
from electra.predict import Predictor
from electra.tasks import GLUE_TEXT_COLUMNS, Example, encodable
from electra.tokenization import split_words

log = logging.getLogger(__name__)


@dataclass
class ServeLimits:
    max_examples: int = 64  # per request
    max_chars: int = 10_000  # per text
    max_body_bytes: int = 1_000_000
    max_batch_size: int = 64  # examples the model runs at once, across requests
    batch_wait_ms: float = 2.0


class BodyLimit:
    """ASGI middleware answering 413 to a body over `max_bytes`: at once when Content-Length says so, else (a
    chunked upload) as soon as the bytes received pass the limit. The body is read here, at most `max_bytes` of
    it, and handed on to the application whole."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send, f"request body of {int(length)} bytes exceeds the {self.max_bytes:,}-byte limit")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send, f"request body exceeds the {self.max_bytes:,}-byte limit")
                return
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> dict:
            nonlocal body
            if body is None:
                return await receive()
            message, body = body, None
            return message

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send: Any, detail: str) -> None:
        content = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": content})


class MicroBatcher:
    """Gathers the examples of concurrent requests into shared batches for one model worker."""

    def __init__(self, predictor: Predictor | OnnxPredictor, limits: ServeLimits):
        self.predictor = predictor
        self.limits = limits
        self.queue: asyncio.Queue[tuple[list[Example], asyncio.Future]] = asyncio.Queue()
        self.worker: asyncio.Task | None = None

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()

    async def predict(self, examples: list[Example]) -> list[dict]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((examples, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self.queue.get()]
            try:
                size = len(pending[0][0])
                deadline = loop.time() + self.limits.batch_wait_ms / 1000
                while size < self.limits.max_batch_size:
                    try:
                        item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                    except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                        break
                    pending.append(item)
                    size += len(item[0])
            except Exception as error:  # the worker must live on: a dead one leaves every later request waiting
                for _, future in pending:
                    if not future.done():
                        future.set_exception(error)
                continue
            await self._answer(pending)

    async def _answer(self, pending: list[tuple[list[Example], asyncio.Future]]) -> None:
        """Settles the futures of `pending` from one run of the model over all their examples."""
        examples = [example for batch, _ in pending for example in batch]
        try:
            predictions = await asyncio.to_thread(self.predictor.predict, examples, self.limits.max_batch_size)
        except Exception as error:  # a failed run fails requests, not the server
            if len(pending) > 1:
                # The batch mixes requests from different clients: one that the model cannot take must not fail the
                # others, so each runs again on its own and only those failing by themselves get the error.
                for item in pending:
                    if not item[1].done():  # not abandoned by its client
                        await self._answer([item])
            elif not pending[0][1].done():
                pending[0][1].set_exception(error)
            return
        start = 0
        for batch, future in pending:
            if not future.done():
                future.set_result(predictions[start : start + len(batch)])
            start += len(batch)


# What each kind of model takes in a request (a tagger's "texts" are split into words as `electra predict` does).
INPUT_KINDS = {
    "classification": ("texts", "pairs"),
    "regression": ("texts", "pairs"),
    "tagging": ("tokens", "texts"),
    "qa": ("questions",),
}


def text_input_kind(spec: dict[str, Any]) -> str | None:
    """ "pairs" or "texts": what a classifier or regressor was fine-tuned on, where its task spec says (user tasks
    name their text columns; GLUE tasks are known); None where it does not (a task of the Python API)."""
    if spec.get("text_column"):
        return "pairs" if spec.get("text_column_2") else "texts"
    if spec.get("name") in GLUE_TEXT_COLUMNS:
        return "pairs" if GLUE_TEXT_COLUMNS[spec["name"]][1] else "texts"
    return None


def create_app(model_dir: str | Path, limits: ServeLimits | None = None, precision: str = "auto") -> Any:
    """The FastAPI application serving the fine-tuned model in `model_dir`."""
    try:
        from fastapi import FastAPI, HTTPException, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
        from pydantic import BaseModel
        from starlette.exceptions import HTTPException as StarletteHTTPException
    except ImportError:
        raise UserError('serving needs FastAPI and uvicorn: pip install "electra[serve]"') from None

    limits = limits or ServeLimits()
    predictor = open_predictor(model_dir, precision)
    head = predictor.head
    batcher = MicroBatcher(predictor, limits)
    text_inputs = text_input_kind(predictor.spec)

    class Question(BaseModel):
        context: str
        question: str
        id: str | None = None

    class PredictRequest(BaseModel):
        texts: list[str] | None = None
        pairs: list[tuple[str, str]] | None = None
        tokens: list[list[str]] | None = None
        questions: list[Question] | None = None

    class PredictResponse(BaseModel):
        predictions: list[dict[str, Any]]
        model: str
        milliseconds: float

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title=f"electra: {head.name}",
        description=f"A fine-tuned ELECTRA {head.kind} model ({len(head.labels)} labels) from {predictor.folder}.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher

    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        """FastAPI's own answer echoes the input, and fails (a 500) on what JSON cannot hold, such as NaN; this one
        says where and what, and names the header a body without it lacks."""
        problems = [{key: item[key] for key in ("loc", "msg", "type") if key in item} for item in error.errors()]
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("application/json"):
            header = f'send the body as JSON, "Content-Type: application/json" (it came as {content_type or "none"})'
            problems.insert(0, {"msg": header})
        not_json = any(item.get("type") == "json_invalid" for item in error.errors())  # a syntax error, not a shape
        return JSONResponse(status_code=400 if not_json else 422, content={"detail": problems})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        """FastAPI's 400 for a body it cannot parse says only that; the usual cause is text not sent as UTF-8."""
        detail = error.detail
        if error.status_code == 400 and detail == "There was an error parsing the body":
            detail = f"{detail}: send JSON encoded as UTF-8 (a GBK or Latin-1 body cannot be read)"
        return JSONResponse(status_code=error.status_code, content={"detail": detail}, headers=error.headers)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "task": head.name,
            "kind": head.kind,
            "labels": head.labels,
            "runtime": predictor.runtime,
        }

    app.add_api_route("/health", health, methods=["HEAD"], include_in_schema=False)  # monitors that only ask

    @app.post("/predict", response_model=PredictResponse)
    async def predict(request: PredictRequest) -> PredictResponse:
        started = time.perf_counter()
        try:
            examples = to_examples(request, head.kind, limits)
            if not examples:
                return PredictResponse(predictions=[], model=head.name, milliseconds=0.0)
            predictions = await batcher.predict(examples)
        except UserError as error:
            raise HTTPException(status_code=422, detail=str(error)) from None
        except HTTPException:
            raise
        except Exception as error:
            # The details (a traceback) are for the operator's log, not for the client.
            log.exception("prediction failed")
            detail = f"the model failed on this request ({type(error).__name__}); the server log has the details"
            raise HTTPException(status_code=500, detail=detail) from None
        return PredictResponse(
            predictions=predictions, model=head.name, milliseconds=1000 * (time.perf_counter() - started)
        )

    def to_examples(request: PredictRequest, kind: str, limits: ServeLimits) -> list[Any]:
        """The request's examples, after checking that they suit the model and the limits."""
        fields = ("texts", "pairs", "tokens", "questions")
        given = [name for name in fields if getattr(request, name) is not None]
        if len(given) != 1:
            raise HTTPException(status_code=422, detail='send exactly one of "texts", "pairs", "tokens" or "questions"')
        texts, pairs, tokens, questions = (getattr(request, name) for name in fields)
        accepted = INPUT_KINDS[kind]
        if given[0] not in accepted:
            detail = (
                'send {"questions": [{"context": ..., "question": ...}]} to a question-answering model'
                if kind == "qa"
                else f'"{given[0]}" is not for a {kind} model: send "{accepted[0]}" or "{accepted[1]}"'
            )
            raise HTTPException(status_code=422, detail=detail)
        if kind in ("classification", "regression") and text_inputs not in (given[0], None):
            detail = f"this model was fine-tuned on {'pairs of texts' if text_inputs == 'pairs' else 'single texts'}"
            raise HTTPException(status_code=422, detail=f'{detail}: send "{text_inputs}"')
        count = len(texts or pairs or tokens or questions or [])
        if count > limits.max_examples:
            raise HTTPException(
                status_code=413, detail=f"{count} examples in one request; send at most {limits.max_examples}"
            )
        lengths = [len(t) for t in texts or []] + [len(a) + len(b) for a, b in pairs or []]
        lengths += [sum(len(word) for word in words) for words in tokens or []]
        lengths += [len(q.context) + len(q.question) for q in questions or []]
        too_long = [index for index, length in enumerate(lengths) if length > limits.max_chars]
        if too_long:
            raise HTTPException(
                status_code=413,
                detail=f"example {too_long[0]} is longer than {limits.max_chars:,} characters; shorten or split it",
            )
        # Refused here, for this request alone: in the model's batch it would fail the requests sharing it. Question
        # ids are checked too, as they go back to the client in the answer.
        strings = [[text] for text in texts or []] + [[a, b] for a, b in pairs or []] + list(tokens or [])
        strings += [[q.context, q.question, q.id or ""] for q in questions or []]
        unencodable = [index for index, parts in enumerate(strings) if not all(map(encodable, parts))]
        if unencodable:
            raise HTTPException(
                status_code=422,
                detail=f"example {unencodable[0]} is not valid Unicode: it holds a lone surrogate (such as \\ud800) "
                "that cannot be encoded as UTF-8; send well-formed text",
            )
        if questions is not None:
            from electra.qa import records_to_examples

            rows = [(index, question.model_dump(exclude_none=True)) for index, question in enumerate(questions)]
            return records_to_examples("questions", rows)
        if tokens is not None:
            return [Example(i, words=list(words)) for i, words in enumerate(tokens)]
        if kind == "tagging":
            return [Example(i, words=split_words(text)) for i, text in enumerate(texts or [])]
        if pairs is not None:
            return [Example(i, text_a=a, text_b=b) for i, (a, b) in enumerate(pairs)]
        return [Example(i, text_a=text) for i, text in enumerate(texts or [])]

    return app


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, limits: ServeLimits | None = None) -> None:
    try:
        import uvicorn
    except ImportError:
        raise UserError('serving needs FastAPI and uvicorn: pip install "electra[serve]"') from None
    uvicorn.run(create_app(model_dir, limits), host=host, port=port, log_level="info")
