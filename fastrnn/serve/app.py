"""The HTTP side: a Starlette application over the workers (fastrnn.serve.workers).

Routes: ``POST /v1/completions`` (OpenAI's schema, streamed as server-sent events or not),
``GET /v1/models`` and ``/v1/models/{name}``, ``POST /v1/classify``, ``GET /health``,
``GET /metrics`` (Prometheus text). Handlers run on the event loop and never compute: they
read the body (at most ``max_body_bytes``: 413 beyond), check it (fastrnn.serve.protocol: 400
naming the field), make the streams (the same validation as model.generate), submit them to the
model's worker (429 with Retry-After when its queue is full) and stream what comes back. The
worker hands each step's new text to ``Server.deliver`` from its thread; that becomes one call
on the event loop, which appends the text to each request's Job and wakes its handler, so a
slow client gets the text of several steps in one event instead of holding the engine up.

With an API key (``--api-key`` / FASTRNN_API_KEY) every route but /health wants
``Authorization: Bearer KEY``; the key's SHA-256 is compared with ``hmac.compare_digest``
(constant time, and the length of the key does not show either). A client that goes away
cancels its streams: their rows are free at the next step. After SIGTERM the server answers
503 to new requests while the requests in flight finish (fastrnn.serve.cli).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import sys
import time
import traceback
import uuid

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .metrics import Metrics
from .protocol import (APIError, Limits, check_prompt_length, dumps, error_body, parse_classify, parse_completion,
                       parse_json, stop_too_long, value_error_param)
from .workers import ClassifyJob, QueueFull, StreamTag

RETRY_AFTER_SECONDS = 1


@dataclasses.dataclass
class ServedModel:
    """One model the server was started with: ``kind`` is "generate" or "classify"."""

    name: str
    kind: str
    model: object
    worker: object
    created: int
    default_max_tokens: int = 0


class Job:
    """One completions request as the event loop sees it: per choice, the text not yet sent,
    the tokens generated, how it finished. Touched only on the event loop."""

    def __init__(self, streams, loop):
        n = len(streams)
        self.streams = streams
        self.pending = [[] for _ in range(n)]  # text received, not yet sent (streaming) / all of it
        self.tokens = [0] * n
        self.finish = [None] * n
        self.errors = [None] * n
        self.left = n
        self.changed = asyncio.Event()
        self.finished = loop.create_future()

    def apply(self, index, piece, tokens, finish, error):
        if piece:
            self.pending[index].append(piece)
        self.tokens[index] = tokens
        if finish is not None and self.finish[index] is None:
            self.finish[index] = finish
            self.errors[index] = error
            self.left -= 1
            if not self.left and not self.finished.done():
                self.finished.set_result(None)
        self.changed.set()

    @property
    def done(self):
        return self.left == 0

    def cancel(self):
        for s in self.streams:
            s.cancel()

    def take(self, index):
        text = "".join(self.pending[index])
        self.pending[index].clear()
        return text


def _apply_items(items):
    for job, index, piece, tokens, finish, error in items:
        job.apply(index, piece, tokens, finish, error)


class Server:
    """What the handlers share: the models, limits, key, metrics, the event loop, draining."""

    def __init__(self, limits: Limits = None, api_key=None, metrics: Metrics = None):
        self.limits = limits or Limits()
        self.metrics = metrics or Metrics()
        self._key_digest = hashlib.sha256(api_key.encode("utf-8")).digest() if api_key else None
        self.models = {}
        self.loop = None
        self.draining = False

    def add(self, served: ServedModel):
        if served.name in self.models:
            raise ValueError(f"two models are named {served.name!r}: rename one of the files")
        self.models[served.name] = served

    # called from the workers' threads
    def deliver(self, items):
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(_apply_items, items)
        except RuntimeError:  # the loop closed meanwhile (shutdown)
            pass

    def check_key(self, request):
        if self._key_digest is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode("utf-8")).digest()
        if not (hmac.compare_digest(given, self._key_digest) and scheme.lower() == "bearer"):
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def find(self, name, kind):
        if name is None:
            mine = [m for m in self.models.values() if m.kind == kind]
            if len(mine) == 1:
                return mine[0]
            what = "language model" if kind == "generate" else "classifier"
            if not mine:
                raise APIError(400, f"this server has no {what} (serving: {', '.join(self.models)})", param="model")
            raise APIError(400, f"model: required, this server has several of them: {', '.join(m.name for m in mine)}",
                           param="model")
        served = self.models.get(name)
        if served is None:
            raise APIError(404, f"the model {name!r} does not exist; this server serves: {', '.join(self.models)}",
                           param="model", code="model_not_found")
        if served.kind != kind:
            where = "POST /v1/classify" if served.kind == "classify" else "POST /v1/completions"
            what = "classifier" if served.kind == "classify" else "language model"
            raise APIError(400, f"model {name!r} is a {what}: use {where}", param="model")
        return served


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise APIError(400, f"Content-Length is not a number: {length!r}") from None
        if declared > limit:
            raise APIError(413, f"the request body has {declared} bytes, over this server's limit of {limit} "
                                "(--max-body-bytes)", code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"the request body is over this server's limit of {limit} bytes (--max-body-bytes)",
                           code="request_too_large")
    return bytes(body)


async def _client_gone(receive):
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _completion_id():
    return "cmpl-" + uuid.uuid4().hex


def build_app(server: Server) -> Starlette:
    limits, metrics = server.limits, server.metrics

    def endpoint(path, auth=True):
        def wrap(handler):
            async def run(request):
                try:
                    if auth:
                        server.check_key(request)
                    if server.draining and path != "/health":
                        raise APIError(503, "the server is shutting down", code="shutting_down",
                                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
                    response = await handler(request)
                except APIError as exc:
                    response = JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
                except Exception:
                    traceback.print_exc(file=sys.stderr)
                    response = JSONResponse(error_body(500, "internal server error (see the server's log)"),
                                            status_code=500)
                metrics.requests.inc(path, str(response.status_code))
                return response
            return run
        return wrap

    @endpoint("/v1/completions")
    async def completions(request):
        arrival = time.monotonic()
        req = parse_completion(parse_json(await read_body(request, limits.max_body_bytes)), limits)
        served = server.find(req.model, "generate")
        params = dict(req.params)
        if params["max_new_tokens"] is None:
            params["max_new_tokens"] = served.default_max_tokens
        streams = []
        for i, prompt in enumerate(req.prompts):
            check_prompt_length(prompt, i, len(req.prompts), served.model.vocabulary, limits)
            try:
                stream = served.worker.make_stream(prompt, **params)
            except ValueError as exc:
                param = value_error_param(str(exc))
                where = f"prompt[{i}]" if param == "prompt" and len(req.prompts) > 1 else param
                raise APIError(400, f"{where}: {exc}", param=param) from None
            stop_too_long(stream, limits)
            streams.append(stream)
        job = Job(streams, asyncio.get_running_loop())
        for i, s in enumerate(streams):
            s.tag = StreamTag(job, i, arrival)
        try:
            served.worker.submit(streams)
        except QueueFull as exc:
            raise APIError(429, f"too many requests: {exc}; retry after {RETRY_AFTER_SECONDS} s",
                           code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        prompt_tokens = sum(len(s.prompt) for s in streams)
        metrics.prompt_tokens.inc(served.name, amount=prompt_tokens)
        head = {"id": _completion_id(), "object": "text_completion", "created": int(time.time()),
                "model": served.name}
        if req.stream:
            return EventStream(job, _events(job, head, prompt_tokens, req.include_usage))
        gone = asyncio.ensure_future(_client_gone(request.receive))
        try:
            await asyncio.wait({job.finished, gone}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled (a shutdown past its timeout): the rows are freed
            job.cancel()
            raise
        finally:
            gone.cancel()
        if not job.done:  # the client went away: free the rows; nobody reads this answer
            job.cancel()
            return JSONResponse(error_body(400, "the client closed the connection"), status_code=499)
        failed = [i for i, e in enumerate(job.errors) if e is not None]
        if failed:
            i = failed[0]
            where = f"prompt[{i}]" if len(streams) > 1 else "the prompt"
            raise APIError(500, f"generation failed for {where}: {job.errors[i]}", param="prompt",
                           code="generation_failed")
        choices = [{"text": job.take(i), "index": i, "logprobs": None, "finish_reason": job.finish[i]}
                   for i in range(len(streams))]
        completion_tokens = sum(job.tokens)
        return JSONResponse({**head, "choices": choices,
                             "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                       "total_tokens": prompt_tokens + completion_tokens}})

    @endpoint("/v1/models")
    async def list_models(request):
        return JSONResponse({"object": "list", "data": [_model_card(m) for m in server.models.values()]})

    @endpoint("/v1/models/{name}")
    async def get_model(request):
        served = server.models.get(request.path_params["name"])
        if served is None:
            raise APIError(404, f"the model {request.path_params['name']!r} does not exist; this server serves: "
                                f"{', '.join(server.models)}", param="model", code="model_not_found")
        return JSONResponse(_model_card(served))

    @endpoint("/v1/classify")
    async def classify(request):
        req = parse_classify(parse_json(await read_body(request, limits.max_body_bytes)), limits)
        served = server.find(req.model, "classify")
        vocab = served.model.vocabulary
        for i, text in enumerate(req.texts):
            n = len(vocab.split(text))
            if n > limits.max_prompt_tokens:
                where = f"input[{i}]" if len(req.texts) > 1 else "input"
                raise APIError(400, f"{where}: {n} tokens, over this server's cap of {limits.max_prompt_tokens} "
                                    "(--max-prompt-tokens)", param="input")
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(results, error):
            if not future.done():
                future.set_result((results, error))

        def on_done(results, error):  # from the worker's thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, results, error)
        try:
            served.worker.submit(ClassifyJob(req.texts, on_done))
        except QueueFull as exc:
            raise APIError(429, f"too many requests: {exc}; retry after {RETRY_AFTER_SECONDS} s",
                           code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        results, error = await future
        if error is not None:
            raise APIError(500, f"classification failed: {error}", param="input", code="classification_failed")
        labels = served.worker.labels
        data = []
        for i, r in enumerate(results):
            probs = [float(p) for p in r.probabilities]
            data.append({"index": i, "label": r.label if isinstance(r.label, str) else int(r.label),
                         "probabilities": dict(zip((str(x) for x in labels), probs)),
                         "unknown_fraction": float(r.unknown_fraction)})
        return JSONResponse({"object": "list", "model": served.name, "labels": [str(x) for x in labels],
                             "data": data})

    @endpoint("/health", auth=False)
    async def health(request):
        if server.draining:
            return JSONResponse({"status": "draining"}, status_code=503,
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return JSONResponse({"status": "ok", "models": list(server.models)})

    @endpoint("/metrics")
    async def render_metrics(request):
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def not_found(request, exc):
        status = getattr(exc, "status_code", 404)
        message = (f"no route {request.method} {request.url.path}" if status == 404 else
                   f"{request.method} is not allowed on {request.url.path}")
        metrics.requests.inc("other", str(status))
        return JSONResponse(error_body(status, message), status_code=status,
                            headers=getattr(exc, "headers", None))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.loop = asyncio.get_running_loop()
        for served in server.models.values():
            served.worker.start()
        try:
            yield
        finally:
            for served in server.models.values():
                served.worker.stop(timeout=10)

    routes = [Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/models", list_models, methods=["GET"]),
              Route("/v1/models/{name}", get_model, methods=["GET"]),
              Route("/v1/classify", classify, methods=["POST"]),
              Route("/health", health, methods=["GET"]),
              Route("/metrics", render_metrics, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: not_found})


class EventStream(StreamingResponse):
    """The server-sent events of a streamed completion. However the response ends (the client
    went away, even before the first event; a shutdown cancelled it), a request that has not
    finished is cancelled: its rows leave the batch at the next step."""

    def __init__(self, job: Job, events):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self.job.done:
                self.job.cancel()


def _model_card(served):
    return {"id": served.name, "object": "model", "created": served.created, "owned_by": "fastrnn",
            "task": served.kind}


def _event(obj) -> str:
    return f"data: {dumps(obj)}\n\n"


async def _events(job: Job, head, prompt_tokens, include_usage):
    """Server-sent events of a streamed completion: per wake-up one chunk per choice with all its
    new text (several steps' worth when the client is slower than the engine), the choice's
    finish_reason in the chunk that ends it, then the usage (if asked) and ``data: [DONE]``; or,
    when a choice fails, an error event (OpenAI's error object) and the end of the stream."""
    n = len(job.streams)
    ended = [False] * n
    while True:
        await job.changed.wait()
        job.changed.clear()
        out = []
        for i in range(n):
            if ended[i]:
                continue
            if job.errors[i] is not None:
                job.cancel()
                where = f"prompt[{i}]" if n > 1 else "the prompt"
                out.append(_event(error_body(500, f"generation failed for {where}: {job.errors[i]}",
                                             param="prompt", code="generation_failed")))
                yield "".join(out)
                return
            text = job.take(i)
            finish = job.finish[i]
            if text or finish is not None:
                out.append(_event({**head, "choices": [{"text": text, "index": i, "logprobs": None,
                                                        "finish_reason": finish}]}))
                ended[i] = finish is not None
        if out:
            yield "".join(out)
        if all(ended):
            break
    if include_usage:
        completion_tokens = sum(job.tokens)
        yield _event({**head, "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                       "completion_tokens": completion_tokens,
                                                       "total_tokens": prompt_tokens + completion_tokens}})
    yield "data: [DONE]\n\n"
