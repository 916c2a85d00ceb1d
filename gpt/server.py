"""An OpenAI-compatible HTTP API and a web chat page over one model (what serve.py runs).

Built on FastAPI + uvicorn rather than LitServe: the API is a handful of JSON routes plus server-sent events, which
FastAPI's ``StreamingResponse`` streams as they come; its ``TestClient``/any HTTP client tests it; and batching is
ours to write anyway, since LitServe's batching groups whole requests while decoding needs requests to join and
leave a running batch token by token (``gpt.batching``). Both are well kept; FastAPI adds no Lightning import to
a process that only serves.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, ``GET /health``, and the chat
page at ``/``. Errors are OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with a 4xx status
for anything the client sent wrong.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.exceptions import HTTPException

from gpt.batching import BatchedDecoder
from gpt.batching import Request as Generation
from gpt.chat import close_turn, turn_ids
from gpt.generation import check_sampling
from gpt.tasks.base import Task
from gpt.tokenizer import StreamDecoder, Tokenizer


@dataclass
class ServeSettings:
    """What serve.py's config decides about the API (conf/serve.yaml holds the defaults)."""

    model_id: str
    api_key: str | None
    max_tokens: int  # a request's default
    max_tokens_limit: int  # the most a request may ask for
    max_body_bytes: int
    max_waiting: int  # requests waiting for a row beyond which new ones get 429
    temperature: float
    top_k: int | None
    top_p: float | None


class APIError(Exception):
    """An error the client receives as OpenAI's error JSON with ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# Request bodies: strict types (a string where a number belongs is an error, not converted), unknown fields ignored.
class _Sampling(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None  # optional here: there is one model
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # the newer name of max_tokens in chat completions
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # an extension: OpenAI has no top-k
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    n: int = 1


class _TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class _Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class _ChatBody(_Sampling):
    messages: list[_Message]


class _CompletionBody(_Sampling):
    prompt: str


class StopText:
    """Text in, text out, cut before the first of the ``stops`` strings; a tail that could be the start of one is
    held back until the next piece shows whether it is."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """(the text that is safe to send, whether a stop string was reached)."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            return self.pending[: min(hits)], True
        keep = max((k for s in self.stops for k in range(len(s) - 1, 0, -1) if self.pending.endswith(s[:k])), default=0)
        out, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class _Job:
    """A validated request: prompt ids and sampling settings."""

    ids: list[int]
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    seed: int | None
    stops: list[str]
    stream: bool
    include_usage: bool
    completion_tokens: int = 0
    finish_reason: str | None = None


def create_app(decoder: BatchedDecoder, tokenizer: Tokenizer, task: Task, settings: ServeSettings) -> FastAPI:
    """The API over the model ``decoder`` decodes (it owns the model: nothing else runs it)."""
    app = FastAPI(title="gpt-from-scratch", docs_url=None, redoc_url=None, openapi_url=None)
    ctx, vocab_size = decoder.ctx, decoder.model.cfg.vocab_size
    instruct = task.chats  # the model answers turns in its instruction template
    created = int(time.time())
    page = resources.files("gpt").joinpath("static/chat.html").read_text(encoding="utf-8")

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:  # unknown route, wrong method
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def server_error(_: Request, e: Exception) -> JSONResponse:  # a bug: say so in the same shape
        return JSONResponse(APIError(500, f"internal error: {e}", type="server_error").body(), status_code=500)

    async def check_key(request: Request) -> None:
        """Every /v1 route: with an api_key set, the right ``Authorization: Bearer`` header or 401."""
        if settings.api_key:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
                raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <api_key>'",
                               code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    async def read_body(request: Request, schema: type[_Sampling]) -> _Sampling:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise APIError(413, f"the request body is over the {settings.max_body_bytes} bytes this server accepts")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > settings.max_body_bytes:
                raise APIError(413, f"the request body is over the {settings.max_body_bytes} bytes this server accepts")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object")
        try:
            return schema.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            param = ".".join(str(p) for p in err["loc"] if not isinstance(p, str) or p not in ("str", "list[_TextPart]"))
            raise APIError(400, f"{param}: {err['msg']}", param=param.split(".")[0] or None) from None

    def job(body: _Sampling, ids: list[int]) -> _Job:
        if body.model is not None and body.model != settings.model_id:
            raise APIError(404, f"the model '{body.model}' does not exist; this server has '{settings.model_id}'",
                           param="model", code="model_not_found")
        if body.n != 1:
            raise APIError(400, f"n must be 1 (one choice per request), got {body.n}", param="n")
        max_tokens = body.max_tokens if body.max_tokens is not None else body.max_completion_tokens
        max_tokens = settings.max_tokens if max_tokens is None else max_tokens
        if not 1 <= max_tokens <= settings.max_tokens_limit:
            raise APIError(400, f"max_tokens must be in 1..{settings.max_tokens_limit}, got {max_tokens}",
                           param="max_tokens")
        temperature = settings.temperature if body.temperature is None else body.temperature
        top_k = settings.top_k if body.top_k is None else body.top_k
        top_p = settings.top_p if body.top_p is None else body.top_p
        try:
            check_sampling(temperature, top_k, top_p, vocab_size)
        except ValueError as e:
            raise APIError(400, str(e), param=str(e).split()[0]) from None
        if body.seed is not None and not -(2**63) <= body.seed < 2**64:
            raise APIError(400, f"seed must be a 64-bit integer, got {body.seed}", param="seed")
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4:
            raise APIError(400, f"stop takes at most 4 strings, got {len(stops)}", param="stop")
        if not ids:
            raise APIError(400, "the prompt is empty", param="messages" if isinstance(body, _ChatBody) else "prompt")
        if len(ids) > ctx:
            raise APIError(400, f"the prompt has {len(ids)} tokens; this model's context is {ctx} tokens. "
                           "Send a shorter prompt (or fewer earlier messages)", param="messages"
                           if isinstance(body, _ChatBody) else "prompt", code="context_length_exceeded")
        if max(ids) >= vocab_size:
            raise APIError(400, f"the prompt has token id {max(ids)}, beyond the model's {vocab_size} tokens")
        if decoder.busy >= decoder.max_batch + settings.max_waiting:
            raise APIError(429, "the server is at its most concurrent requests; retry shortly",
                           type="rate_limit_error", code="server_busy")
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return _Job(ids, max_tokens, temperature, top_k, top_p, body.seed, stops, body.stream, include_usage)

    def chat_ids(messages: list[_Message]) -> list[int]:
        """An instruct model: the conversation in its Alpaca template, as the terminal chat builds it (system
        messages have no place in that template and are left out). A pretrained model: the messages' text,
        one per line, to continue."""
        if not messages or messages[-1].role != "user":
            raise APIError(400, "messages must end with a message whose role is 'user'", param="messages")
        if not instruct:
            return tokenizer.encode("\n".join(m.text() for m in messages))
        history: list[int] = []
        turns = [m for m in messages if m.role in ("user", "assistant")]
        for i, m in enumerate(turns):
            if m.role == "user":
                prompt = turn_ids(tokenizer, m.text(), history)
                reply = turns[i + 1].text() if i + 1 < len(turns) and turns[i + 1].role == "assistant" else None
                history = prompt if reply is None else close_turn(tokenizer, prompt, tokenizer.encode(reply))
        return history

    async def pieces(request: Request, j: _Job) -> AsyncIterator[str]:
        """The reply's text as it is decoded, cut at a stop string; sets ``j.completion_tokens``/``finish_reason``.
        A client that goes away, or a stop string, frees the request's row."""
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue = asyncio.Queue()
        gen = Generation(j.ids, j.max_tokens, lambda t, r: loop.call_soon_threadsafe(tokens.put_nowait, (t, r)),
                         j.temperature, j.top_k, j.top_p, j.seed)
        decoder.submit(gen)
        text, stops = StreamDecoder(tokenizer), StopText(j.stops)
        try:
            while True:
                try:
                    token, reason = await asyncio.wait_for(tokens.get(), timeout=1.0)
                except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
                    if await request.is_disconnected():
                        return
                    continue
                if token is None:
                    if reason.startswith("error"):
                        raise APIError(500, f"generation failed: {reason}", type="server_error")
                    j.finish_reason = reason
                    if tail := stops.flush():
                        yield tail
                    return
                j.completion_tokens += 1
                piece, stopped = stops.push(text.push(token))
                if piece:
                    yield piece
                if stopped:
                    j.finish_reason = "stop"
                    return
        finally:
            gen.cancel()  # nothing left to do if it had finished; otherwise its row is freed at the next step

    def usage(j: _Job) -> dict:
        return {"prompt_tokens": len(j.ids), "completion_tokens": j.completion_tokens,
                "total_tokens": len(j.ids) + j.completion_tokens}

    def sse(obj: dict | str) -> str:
        return f"data: {obj if isinstance(obj, str) else json.dumps(obj, separators=(',', ':'))}\n\n"

    async def respond(request: Request, j: _Job, kind: Literal["chat", "text"]) -> Response:
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        obj = "chat.completion" if kind == "chat" else "text_completion"
        head = {"id": rid, "object": obj, "created": int(time.time()), "model": settings.model_id}

        def choice(text: str | None, finish: str | None) -> dict:
            if kind == "text":
                return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            delta = {} if text is None else {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

        if not j.stream:
            text = "".join([p async for p in pieces(request, j)])
            if kind == "chat":
                message = {"role": "assistant", "content": text}
                choices = [{"index": 0, "message": message, "logprobs": None, "finish_reason": j.finish_reason}]
            else:
                choices = [choice(text, j.finish_reason)]
            return JSONResponse({**head, "choices": choices, "usage": usage(j)})

        async def events() -> AsyncIterator[str]:
            chunk = {**head, "object": f"{obj}.chunk" if kind == "chat" else obj}
            if kind == "chat":
                yield sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                 "logprobs": None, "finish_reason": None}]})
            try:
                async for piece in pieces(request, j):
                    yield sse({**chunk, "choices": [choice(piece, None)]})
            except APIError as e:  # the status line has gone out: the error travels as an event
                yield sse(e.body())
                yield sse("[DONE]")
                return
            if j.finish_reason is None:  # the client went away
                return
            yield sse({**chunk, "choices": [choice(None, j.finish_reason)]})
            if j.include_usage:
                yield sse({**chunk, "choices": [], "usage": usage(j)})
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @v1.post("/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await read_body(request, _ChatBody)
        return await respond(request, job(body, chat_ids(body.messages)), "chat")

    @v1.post("/completions")
    async def completions(request: Request) -> Response:
        body = await read_body(request, _CompletionBody)
        return await respond(request, job(body, tokenizer.encode(body.prompt)), "text")

    def model_card() -> dict:
        return {"id": settings.model_id, "object": "model", "created": created, "owned_by": "gpt-from-scratch",
                "context_length": ctx, "task": task.name}

    @v1.get("/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @v1.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        if model_id != settings.model_id:
            raise APIError(404, f"the model '{model_id}' does not exist", param="model", code="model_not_found")
        return model_card()

    app.include_router(v1)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": settings.model_id, "requests_in_flight": decoder.busy}

    @app.get("/", response_class=HTMLResponse)
    async def chat_page() -> str:
        return page

    return app
