"""The HTTP front: a Starlette app over a `ChatService`.

    POST /v1/chat/completions   OpenAI chat completions (JSON, or server-sent events with "stream": true)
    GET  /v1/models             the one model served
    GET  /health                200 {"status": "ok", ...} while the engine runs, else 503
    GET  /metrics               Prometheus text (serve/metrics.py)
    GET  /                      the chat page (serve/static/)

With an API key, `/v1/*` needs `Authorization: Bearer KEY` (the page asks for it); `/`, `/health`
and `/metrics` stay open. Every error is OpenAI's JSON `{"error": {...}}` with a 4xx/5xx status.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import pathlib
import time
import uuid

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .metrics import CONTENT_TYPE
from .protocol import ApiError, parse_chat_request
from .service import ChatService, Completion

STATIC = pathlib.Path(__file__).parent / "static"
COMPLETIONS = "/v1/chat/completions"


def error_response(e: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _check_key(request: Request, key) -> None:
    if key is None:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if not auth:
        raise ApiError(401, "missing API key: send 'Authorization: Bearer KEY'", code="missing_api_key")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(401, "invalid API key", code="invalid_api_key")


async def _read_json(request: Request, limit: int):
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is {declared} bytes; the limit is {limit} (--max-body-bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the body exceeds {limit} bytes (--max-body-bytes)")
    try:
        return json.loads(body) if len(body) < 2 ** 16 else await run_in_threadpool(json.loads, bytes(body))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None


def _usage(c: Completion) -> dict:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}


def create_app(service: ChatService, manage_engine: bool = True) -> Starlette:
    """The app. With `manage_engine`, its lifespan starts the engine and stops it at shutdown."""
    opts, metrics = service.options, service.metrics

    def counted(endpoint: str, response: Response) -> Response:
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response

    async def completions(request: Request) -> Response:
        arrived = time.monotonic()
        try:
            _check_key(request, opts.api_key)
            req = parse_chat_request(await _read_json(request, opts.max_body_bytes))
            stream = service.stream(req, arrived)
            await stream.__anext__()  # queued: preparation errors surface here, before any byte is sent
        except ApiError as e:
            return counted(COMPLETIONS, error_response(e))
        except ClientDisconnect:
            return counted(COMPLETIONS, Response(status_code=499))
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            return counted(COMPLETIONS, StreamingResponse(_sse(rid, created, req, stream),
                                                          media_type="text/event-stream",
                                                          headers={"Cache-Control": "no-cache"}))
        try:
            done = ""
            while not isinstance(done, Completion):
                done = (await _next_or_disconnect(stream, request))[1]
        except ApiError as e:
            return counted(COMPLETIONS, error_response(e))
        except ClientDisconnect:
            return counted(COMPLETIONS, Response(status_code=499))
        finally:
            await stream.aclose()  # frees the slot if the client went away
        return counted(COMPLETIONS, JSONResponse({
            "id": rid, "object": "chat.completion", "created": created, "model": opts.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                         "finish_reason": done.finish_reason, "logprobs": None}],
            "usage": _usage(done)}))

    async def _sse(rid, created, req, stream):
        def chunk(delta, finish=None, **extra):
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": opts.model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
            return f"data: {json.dumps(body)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        try:
            async for _, piece in stream:
                if isinstance(piece, Completion):
                    yield chunk({}, piece.finish_reason)
                    if req.include_usage:
                        body = json.loads(chunk({})[len("data: "):])
                        body.update(choices=[], usage=_usage(piece))
                        yield f"data: {json.dumps(body)}\n\n"
                    break
                if piece:
                    yield chunk({"content": piece})
        except ApiError as e:
            yield f"data: {json.dumps(e.body())}\n\n"
        finally:
            await stream.aclose()  # the client went away (or we are done): the slot is freed
        yield "data: [DONE]\n\n"

    async def models(request: Request) -> Response:
        try:
            _check_key(request, opts.api_key)
        except ApiError as e:
            return counted("/v1/models", error_response(e))
        return counted("/v1/models", JSONResponse({"object": "list", "data": [
            {"id": opts.model_name, "object": "model", "created": 0, "owned_by": "llava-mini-jax",
             "max_model_len": service.engine.max_context}]}))

    async def health(request: Request) -> Response:
        engine = service.engine
        ok = engine.running
        return JSONResponse({"status": "ok" if ok else "engine not running", "model": opts.model_name,
                             "active_slots": engine.active, "slots": engine.max_batch, "queued": engine.queued},
                            status_code=200 if ok else 503)

    async def prometheus(request: Request) -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def not_found(request: Request, exc) -> Response:
        status = getattr(exc, "status_code", 404)
        return error_response(ApiError(status, f"{request.method} {request.url.path}: "
                                               f"{'not found' if status == 404 else 'method not allowed'}"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if manage_engine:
            service.engine.start()
        try:
            yield
        finally:
            if manage_engine:
                service.engine.stop()

    routes = [Route(COMPLETIONS, completions, methods=["POST"]), Route("/v1/models", models),
              Route("/health", health), Route("/metrics", prometheus), Route("/", page),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})


async def _next_or_disconnect(stream, request: Request, poll: float = 0.5):
    """The next item of `stream`; raises ClientDisconnect when the client goes away while waiting."""
    task = asyncio.ensure_future(stream.__anext__())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientDisconnect()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
