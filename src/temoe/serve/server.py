"""OpenAI-compatible HTTP server (`/v1/completions`, `/v1/chat/completions`, `/v1/models`, `/v1/stats`) over
the offloading engine, with one controller state per request.

Concurrency: one worker thread owns the model and interleaves the active requests token by token (one batch-1
forward per step, round robin). The resident set of a layer is the union of the active requests' options, so
in option mode at most `expert_budget // k̂` requests are active at once (the cap); later requests wait in a
FIFO of `max_queue`, and beyond that get HTTP 429. A failing request is answered with its error and dropped
without touching the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from temoe.serve.engine import OffloadEngine
from temoe.serve.generate import decode_steps, resolve_masks
from temoe.validation import POSITIVE_INT, SEED, TOP_P, Range


class RequestError(Exception):
    """A client error: answered with `status` and an OpenAI-style error body."""

    def __init__(self, message: str, status: int = 400, param: str | None = None):
        super().__init__(message)
        self.status, self.param = status, param


def _error(message: str, status: int, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": status}}, status_code=status
    )


@dataclass
class Job:
    """One request inside the worker: its token generator, output queue and per-request statistics."""

    input_ids: torch.Tensor
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    stream_id: int = 0
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    start: float = field(default_factory=time.perf_counter)
    token_times: list[float] = field(default_factory=list)

    def emit(self, kind: str, payload) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is closed (server shutting down): nobody is listening
            self.cancelled = True


class Worker:
    """Owns the model; admits at most `max_active` jobs and interleaves them token by token."""

    def __init__(
        self,
        engine: OffloadEngine,
        tokenizer,
        controller=None,
        static_masks=None,
        max_active: int = 1,
        max_queue: int = 16,
    ):
        self.engine, self.tokenizer, self.controller, self.static_masks = (
            engine,
            tokenizer,
            controller,
            static_masks,
        )
        self.max_active, self.max_queue = max_active, max_queue
        self._waiting: deque[Job] = deque()
        self._active: list[tuple[Job, object]] = []
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._stop = False
        self.step_lock = threading.Lock()
        self.completed = 0
        self.failed = 0
        self.cancelled = 0
        self._thread = threading.Thread(target=self._loop, name="temoe-serve-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise RequestError(
                    f"server busy: {len(self._active)} active requests (cap {self.max_active}) and "
                    f"{len(self._waiting)} waiting (queue limit {self.max_queue}); retry later",
                    429,
                )
            job.stream_id = next(self._ids)
            self._waiting.append(job)
            self._cond.notify()

    def shutdown(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def load(self) -> dict:
        return {
            "active": len(self._active),
            "waiting": len(self._waiting),
            "max_active": self.max_active,
            "max_queue": self.max_queue,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
        }

    def _start(self, job: Job):
        gen = torch.Generator().manual_seed(job.seed) if job.seed is not None else None
        route, _, state = resolve_masks(
            self.engine.handle, self.controller, self.static_masks, temperature=job.temperature, generator=gen
        )
        eos = self.tokenizer.eos_token_id
        return decode_steps(
            self.engine,
            job.input_ids,
            job.max_tokens,
            masks=route,
            stream=job.stream_id,
            temperature=job.temperature,
            top_p=job.top_p,
            generator=gen,
            eos_token_id=eos,
            on_prefill_done=getattr(state, "begin_generation", None),
        )

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._waiting and not self._active:
                    self._cond.wait()
                if self._stop:
                    return
                while self._waiting and len(self._active) < self.max_active:
                    job = self._waiting.popleft()
                    self._active.append((job, None))
            for idx, (job, steps) in enumerate(list(self._active)):
                with self.step_lock:  # /v1/stats reads the engine between steps, never during one
                    self._step(idx, job, steps)
            self._active = [(j, s) for j, s in self._active if s is not False]

    def _step(self, idx: int, job: Job, steps) -> None:
        """Advance one job by one token; on completion/failure mark its slot False (removed by the loop)."""
        finish = None
        try:
            if job.cancelled:
                finish = "cancelled"
            else:
                if steps is None:
                    steps = self._start(job)
                    self._active[idx] = (job, steps)
                token = next(steps, None)
                if token is None:
                    finish = "length"
                else:
                    finish = self._accept(job, token)
        except Exception as err:  # a failing request must not take the worker (or other requests) down
            self.failed += 1
            job.emit("error", f"{type(err).__name__}: {err}")
            finish = "error"
        if finish is not None:
            self.engine.release(job.stream_id)
            self.cancelled += finish == "cancelled"
            if finish not in ("error", "cancelled"):
                self.completed += 1
                job.emit("done", (finish, self._usage(job)))
            self._active[idx] = (job, False)

    def _accept(self, job: Job, token: int) -> str | None:
        job.token_times.append(time.perf_counter())
        eos = token == self.tokenizer.eos_token_id
        if not eos:
            job.tokens.append(token)
        text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
        for stop in job.stop:
            cut = text.find(stop)
            if cut >= 0:
                self._emit_text(job, text[:cut])
                return "stop"
        finish = "stop" if eos else ("length" if len(job.token_times) >= job.max_tokens else None)
        if finish is not None:
            self._emit_text(job, text)
        elif not text.endswith("\ufffd"):  # wait for complete UTF-8 characters
            # Hold back a tail that could still grow into a stop string, so it is never streamed.
            held = max((k for stop in job.stop for k in range(1, len(stop)) if text.endswith(stop[:k])),
                       default=0)
            self._emit_text(job, text[: len(text) - held])
        return finish

    def _emit_text(self, job: Job, text: str) -> None:
        if len(text) > len(job.text):
            job.emit("text", text[len(job.text) :])
            job.text = text

    def _usage(self, job: Job) -> dict:
        prompt = int(job.input_ids.shape[1])
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(job.token_times),
            "total_tokens": prompt + len(job.token_times),
        }
        if job.token_times:
            usage["ttft_ms"] = (job.token_times[0] - job.start) * 1e3
            span = job.token_times[-1] - job.token_times[0]
            if len(job.token_times) > 1 and span > 0:
                usage["decode_tokens_per_s"] = (len(job.token_times) - 1) / span
        return usage


# ------------------------------------------------------------------------------------------- validation
#: Default request-body limit: room for a prompt filling gpt-oss's 131,072 positions (about 4 bytes a token)
#: plus JSON escaping, while one request can never hold more than this much memory while it is read.
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024

#: Fallback chat template for a model whose tokenizer has none (the embedded `tiny` model is a plain text
#: completion model): the messages' contents, one per line, with no role markup.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if not loop.first %}\n{% endif %}{{ message['content'] }}{% endfor %}"
)


def _ranged(r: Range):
    return AfterValidator(lambda value, info: r.check(info.field_name, value))


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class _Request(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions; unknown fields are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")
    model: str
    n: int = 1
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: Annotated[float, _ranged(Range(0, 2))] = 1.0
    top_p: Annotated[float, _ranged(TOP_P)] = 1.0
    stop: str | list[str] | None = None
    seed: Annotated[int | None, AfterValidator(lambda v: v if v is None else SEED.check("seed", v))] = None


class CompletionRequest(_Request):
    prompt: str | list[str]


class ChatRequest(_Request):
    messages: list[Message]


_TYPE_WORDS = {"int": "an integer", "float": "a number", "string": "a string", "bool": "a boolean",
               "list": "an array", "dict": "an object", "model": "an object"}


def _request_error(err: ValidationError) -> RequestError:
    """The first pydantic error as an OpenAI-style 400 naming the field (`param`) and what it must be."""
    e = err.errors(include_url=False)[0]
    loc = [str(x) for x in e["loc"] if not str(x).startswith(("function-", "str", "list["))]
    path = loc[0] + "".join(f"[{x}]" if x.isdigit() else f".{x}" for x in loc[1:]) if loc else "body"
    kind = e["type"]
    if kind == "missing":
        where = path.rsplit(".", 1)[0] + ": " if len(loc) > 1 else ""
        message = f"{where}missing required field '{loc[-1]}'"
    elif kind == "value_error":
        message = str(e["ctx"]["error"])
    elif kind.split("_")[0] in _TYPE_WORDS and kind.endswith(("_type", "_parsing")):
        message = f"field '{path}' must be {_TYPE_WORDS[kind.split('_')[0]]}"
    else:
        message = f"field '{path}': {e['msg']}"
    return RequestError(message, param=loc[0] if loc else None)


class App:
    """Request parsing and response formatting; `App(...).starlette` is the ASGI app.

    `max_body_bytes` bounds a request body (413 beyond it); `chat_template` is used when the tokenizer has
    none (else /v1/chat/completions answers 400); with `api_key` every /v1 route needs
    `Authorization: Bearer <api_key>` (401 otherwise), as in vLLM's OpenAI server.
    """

    def __init__(
        self,
        engine: OffloadEngine,
        tokenizer,
        model_name: str,
        *,
        controller=None,
        static_masks=None,
        max_active: int | None = None,
        max_queue: int = 16,
        max_tokens_limit: int = 1024,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        chat_template: str | None = None,
        api_key: str | None = None,
    ):
        self.engine, self.tokenizer, self.model_name = engine, tokenizer, model_name
        self.max_tokens_limit = POSITIVE_INT.check("max_tokens_limit", max_tokens_limit)
        self.max_body_bytes = POSITIVE_INT.check("max_body_bytes", max_body_bytes)
        self.chat_template = getattr(tokenizer, "chat_template", None) or chat_template
        self.api_key = api_key
        self.max_positions = getattr(engine.handle.model.config, "max_position_embeddings", None)
        if max_active is None:
            max_active = default_max_active(engine, controller, static_masks)
        self.max_active = POSITIVE_INT.check("max_active", max_active)
        max_queue = POSITIVE_INT.check("max_queue", max_queue)
        self.worker = Worker(engine, tokenizer, controller, static_masks, self.max_active, max_queue)
        self.created = int(time.time())
        self.starlette = Starlette(
            routes=[
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/stats", self.stats, methods=["GET"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ],
            middleware=[Middleware(_BearerAuth, api_key=api_key)] if api_key else [],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        yield
        self.worker.shutdown()

    async def models(self, request: Request):
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "temoe"}
                ],
            }
        )

    async def stats(self, request: Request):
        def read() -> dict:
            with self.worker.step_lock:
                return {"worker": self.worker.load(), **self.engine.summary(), **self.engine.memory_report()}

        return JSONResponse(await asyncio.to_thread(read))

    async def completions(self, request: Request):
        return await self._handle(request, chat=False)

    async def chat(self, request: Request):
        return await self._handle(request, chat=True)

    async def _handle(self, request: Request, chat: bool):
        try:
            body = await self._json(request)
            try:
                req = (ChatRequest if chat else CompletionRequest).model_validate(body)
            except ValidationError as err:
                raise _request_error(err) from None
            self._check(req, chat)
            # Chat template and tokenizer run in a thread: a long prompt never stalls the event loop.
            job = await asyncio.to_thread(self._job, req, chat, asyncio.get_running_loop(), asyncio.Queue())
            self.worker.submit(job)
        except RequestError as err:
            return _error(str(err), err.status, err.param)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if req.stream:
            return StreamingResponse(self._sse(job, rid, chat), media_type="text/event-stream")
        return await self._collect(job, rid, chat, request)

    async def _json(self, request: Request) -> dict:
        body = await self._read_body(request)
        try:
            body = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(f"request body is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise RequestError("request body must be a JSON object")
        model = body.get("model")
        if isinstance(model, str) and model != self.model_name:
            raise RequestError(
                f"model '{model}' is not served here; available: '{self.model_name}'", 404, "model"
            )
        return body

    async def _read_body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it passes `max_body_bytes` (never held in full beyond it)."""
        too_big = RequestError(f"request body exceeds the server's limit of {self.max_body_bytes} bytes "
                               "(temoe serve --max-body-bytes)", 413)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    def _check(self, req: _Request, chat: bool) -> None:
        """The checks a request model cannot express: n, the app's max_tokens limit, stop, prompt shape."""
        if req.n != 1:
            raise RequestError("only n=1 is supported", param="n")
        limit = Range(1, self.max_tokens_limit, integer=True)
        name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        value = req.max_completion_tokens or (16 if req.max_tokens is None else req.max_tokens)
        if not limit.contains(value):
            raise RequestError(f"{name}={value!r}: must be {limit.describe()}", param=name)
        req.max_tokens = value
        stop = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        if not all(stop) or len(stop) > 4:
            raise RequestError(
                "'stop' must be a non-empty string or an array of up to 4 non-empty strings", param="stop"
            )
        req.stop = stop
        if chat:
            if not req.messages:
                raise RequestError("'messages' must be a non-empty array", param="messages")
            if not self.chat_template:
                raise RequestError(f"model '{self.model_name}' has no chat template: use /v1/completions, or "
                                   "start the server with --chat-template FILE", param="messages")
        elif isinstance(req.prompt, list):
            if len(req.prompt) != 1:
                raise RequestError("'prompt' must be a string or a list of exactly one string",
                                   param="prompt")
            req.prompt = req.prompt[0]

    def _job(self, req: _Request, chat: bool, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> Job:
        """Template + tokenise (in a worker thread) and check the prompt fits the model's positions."""
        max_tokens = req.max_tokens
        if chat:
            messages = [m.model_dump() for m in req.messages]
            prompt = self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template,
                                                        tokenize=False, add_generation_prompt=True)
        else:
            prompt = req.prompt
        # 64 characters per token is beyond any tokenizer's average: refuse without tokenising
        if self.max_positions and len(prompt) > 64 * self.max_positions:
            raise RequestError(f"prompt of {len(prompt)} characters cannot fit the model's "
                               f"{self.max_positions} positions", param="prompt")
        input_ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        if input_ids.shape[1] == 0:
            raise RequestError("the prompt is empty after tokenisation", param="prompt")
        if self.max_positions and input_ids.shape[1] + max_tokens > self.max_positions:
            raise RequestError(
                f"prompt ({input_ids.shape[1]} tokens) + max_tokens ({max_tokens}) exceeds the "
                f"model's {self.max_positions} positions",
                param="max_tokens",
            )
        return Job(input_ids=input_ids, max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                   stop=req.stop, seed=req.seed, loop=loop, queue=queue)

    async def _collect(self, job: Job, rid: str, chat: bool, request: Request):
        """Wait for the job's result; a client that disconnects first cancels it (never counted completed)."""
        result = asyncio.ensure_future(self._drain(job))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        finally:
            gone.cancel()
        if not result.done():
            job.cancelled = True  # the worker drops it at its next step
            result.cancel()
            return Response(status_code=499)  # nobody reads it: the connection is closed
        kind, text, payload = result.result()
        if kind == "error":
            return _error(f"generation failed: {payload}", 500)
        finish, usage = payload
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            if chat
            else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        )
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": self.model_name,
                "choices": [choice],
                "usage": usage,
            }
        )

    @staticmethod
    async def _drain(job: Job) -> tuple[str, str, object]:
        """("done", text, (finish, usage)) or ("error", text, message) once the worker finishes `job`."""
        text = ""
        while True:
            kind, payload = await job.queue.get()
            if kind == "text":
                text += payload
            else:
                return kind, text, payload

    async def _sse(self, job: Job, rid: str, chat: bool):
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: str | None, finish: str | None, first: bool = False) -> str:
            if chat:
                d = {"role": "assistant", "content": ""} if first else ({"content": delta} if delta else {})
                choice = {"index": 0, "delta": d, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
            return (
                "data: "
                + json.dumps(
                    {
                        "id": rid,
                        "object": obj,
                        "created": created,
                        "model": self.model_name,
                        "choices": [choice],
                    }
                )
                + "\n\n"
            )

        try:
            if chat:
                yield chunk(None, None, first=True)
            while True:
                kind, payload = await job.queue.get()
                if kind == "text":
                    yield chunk(payload, None)
                elif kind == "error":
                    yield (
                        "data: "
                        + json.dumps(
                            {
                                "error": {
                                    "message": f"generation failed: {payload}",
                                    "type": "server_error",
                                    "code": 500,
                                }
                            }
                        )
                        + "\n\n"
                    )
                    break
                else:
                    yield chunk(None, payload[0])
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled = True  # client went away (or we are done): the worker drops the job next step


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read: the next message is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _BearerAuth:
    """ASGI middleware: every /v1 request needs `Authorization: Bearer <api_key>` (401 otherwise)."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = _error("missing or wrong API key: send 'Authorization: Bearer <key>'", 401)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def default_max_active(engine: OffloadEngine, controller=None, static_masks=None) -> int:
    """Concurrency cap: in option mode the union of active options must fit, so budget // k̂; otherwise 4."""
    from temoe.serve.policy import OptionPolicy, StaticPolicy

    policy = engine.policy
    if isinstance(policy, OptionPolicy) and not isinstance(policy, StaticPolicy):
        k_hat = (
            controller.k_hat
            if controller is not None
            else (int(static_masks.sum(-1).max()) if static_masks is not None else policy.num_slots)
        )
        return max(1, policy.num_slots // k_hat)
    return 4


def make_app(engine: OffloadEngine, tokenizer, model_name: str, **kwargs) -> Starlette:
    """The ASGI app serving `engine` (see `App` for the keyword arguments)."""
    return App(engine, tokenizer, model_name, **kwargs).starlette


def start_background(app, host: str = "127.0.0.1", port: int = 0):
    """Run `app` with uvicorn in a daemon thread (tests, notebooks); returns (server, thread, port).

    port=0 picks a free port. Stop with `server.should_exit = True; thread.join()`.
    """
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.05)
    return server, thread, port
