"""The ASGI app (Starlette): OpenAI's Images API, health and metrics, and the web page.

    POST /v1/images/generations   {"prompt", "n", "size", "response_format", ...} -> {"created", "data": [...]}
    POST /v1/images/variations    multipart: image (file), n, size, response_format, seed, ..., latent, eta ->
                                  decoded from the image's DDIM-inverted latent (latent=noise: fresh noise)
    POST /v1/images/edits         image (+ mask: transparent or white = fill), prompt, n, ... (multipart, or JSON
                                  with base64 files) -> the image kept outside the mask, the hole drawn from
                                  the prompt (UnCLIPPipeline.inpaint's RePaint), batched like the rest
    GET  /v1/images/files/ID.png  an image answered with response_format=url (the last url_cache kept)
    GET  /v1/models               the one model served
    GET  /health                  queue depth, batch sizes, images/s, latency percentiles, request counts
    GET  /config                  defaults and limits (the web page reads them)
    GET  /                        the web page (static/)

Each image of a response carries its ``seed`` beside OpenAI's fields, and its PNG records prompt,
seed and settings. A client that disconnects while its request waits cancels it.
"""
from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dalle2_fast.serve.api import ApiError, decode_b64, parse_edit, parse_generation, parse_variation
from dalle2_fast.serve.batcher import Batcher, BatchFailed, QueueFull
from dalle2_fast.serve.config import MODEL_ID, ServeConfig
from dalle2_fast.serve.engine import Engine
from dalle2_fast.serve.metrics import Metrics

STATIC = Path(__file__).parent / "static"
FILE_ID = re.compile(r"^[A-Za-z0-9_-]{22}\.png$")


class ImageStore:
    """The PNGs answered by URL: the newest ``size`` kept in memory (no file paths involved)."""

    def __init__(self, size: int):
        self.size, self.items = size, OrderedDict()

    def put(self, data: bytes) -> str:
        name = secrets.token_urlsafe(16) + ".png"
        self.items[name] = data
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return name

    def get(self, name: str) -> bytes | None:
        return self.items.get(name)


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes without reading it whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is larger than the {limit} accepted", None)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is larger than the {limit} bytes accepted", None)
        chunks.append(chunk)
    return b"".join(chunks)


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(pipe, config: ServeConfig | None = None) -> Starlette:
    """The service over ``pipe`` (an :class:`~dalle2_fast.pipeline.UnCLIPPipeline`)."""
    cfg = config or ServeConfig()
    engine = Engine(pipe, cfg.max_batch if cfg.fixed_batch_shape else None)
    metrics = Metrics()
    batcher = Batcher(engine, cfg.max_batch, cfg.max_wait_ms / 1e3, cfg.max_queue, metrics)
    store = ImageStore(cfg.url_cache)
    size = engine.image_size

    async def run(request: Request, req) -> Response:
        t0 = time.monotonic()
        try:
            settings = engine.settings(req.kind, req.overrides)
        except ValueError as e:
            raise ApiError(400, str(e), None) from None
        meta = {"model": MODEL_ID, **settings}
        if req.kind == "variation":
            meta["variation"] = True
        else:
            meta["prompt"] = req.prompt
            if req.kind in ("edit", "unchanged"):
                meta["edit"] = True
        try:
            ticket = batcher.submit(req, settings, meta)
        except QueueFull as e:
            metrics.request("rejected")
            raise ApiError(429, f"the server is busy: {e}; retry later", None, "rate_limit_error",
                           headers={"Retry-After": "1"}) from None
        watch = asyncio.ensure_future(_until_disconnect(request))
        try:
            await asyncio.wait({ticket.future, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if not ticket.future.done():  # the client went away: drop its waiting images
            batcher.cancel(ticket)
            metrics.request("cancelled")
            return Response(status_code=499)
        try:
            pngs = ticket.future.result()
        except BatchFailed as e:
            metrics.request("failed")
            raise ApiError(500, f"generation failed: {e}", None, "server_error") from None
        data = []
        for k, png in enumerate(pngs):
            item = {"seed": req.seed + k}
            if req.response_format == "b64_json":
                item["b64_json"] = base64.b64encode(png).decode()
            else:
                item["url"] = str(request.url_for("image_file", name=store.put(png)))
            data.append(item)
        metrics.request("ok", time.monotonic() - t0)
        return JSONResponse({"created": int(time.time()), "data": data})

    async def generations(request: Request) -> Response:
        ctype = content_type(request)
        if ctype != "application/json":
            raise ApiError(415, f"Content-Type: expected application/json, got {ctype or 'none'!r}",
                           "Content-Type")
        raw = await _read_body(request, cfg.max_body_bytes)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON ({e})", None) from None
        return await run(request, parse_generation(body, cfg, size))

    async def read_form(request: Request, file_fields: tuple[str, ...], limit: int) -> tuple[dict, dict]:
        """A multipart upload -> (text fields, {file field: bytes}), refused past ``limit`` bytes."""
        declared = request.headers.get("content-length")
        if declared is None or not declared.isdigit():
            raise ApiError(411, "Content-Length: required for uploads", "Content-Length")
        if int(declared) > limit:
            raise ApiError(413, f"upload of {declared} bytes is larger than the {limit} accepted", "image")
        try:
            form = await request.form(max_files=len(file_fields), max_fields=32, max_part_size=cfg.max_upload_bytes)
        except HTTPException as e:
            raise ApiError(400, f"multipart body: {e.detail}", None) from None
        fields, files = {}, {}
        for k, v in form.multi_items():
            if hasattr(v, "read"):
                if k not in file_fields:
                    raise ApiError(400, f"Unrecognized file field supplied: {k} (this endpoint takes the files "
                                        f"{', '.join(file_fields)})", k)
                files[k] = await v.read()
            else:
                fields[k] = v
        await form.close()
        return fields, files

    def content_type(request: Request) -> str:
        return request.headers.get("content-type", "").split(";")[0].strip().lower()

    async def variations(request: Request) -> Response:
        ctype = content_type(request)
        if ctype != "multipart/form-data":
            raise ApiError(415, f"Content-Type: expected multipart/form-data with an 'image' file, got "
                                f"{ctype or 'none'!r}", "Content-Type")
        fields, files = await read_form(request, ("image",), cfg.max_upload_bytes)
        return await run(request, parse_variation(fields, files.get("image"), cfg, size))

    async def edits(request: Request) -> Response:
        ctype = content_type(request)
        if ctype == "multipart/form-data":
            fields, files = await read_form(request, ("image", "mask"), 2 * cfg.max_upload_bytes)
            req = parse_edit(fields, files.get("image"), files.get("mask"), cfg, size, form=True)
        elif ctype == "application/json":  # the files as base64 strings
            raw = await _read_body(request, cfg.max_body_bytes + 3 * cfg.max_upload_bytes)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise ApiError(400, f"the request body is not valid JSON ({e})", None) from None
            if not isinstance(body, dict):
                raise ApiError(400, f"expected a JSON object with 'image' and 'prompt', got {type(body).__name__}",
                               None)
            files = {k: decode_b64(k, body.pop(k)) for k in ("image", "mask") if body.get(k) is not None}
            body.pop("mask", None)
            req = parse_edit(body, files.get("image"), files.get("mask"), cfg, size, form=False)
        else:
            raise ApiError(415, f"Content-Type: expected multipart/form-data (files 'image', 'mask') or "
                                f"application/json (base64), got {ctype or 'none'!r}", "Content-Type")
        return await run(request, req)

    async def image_file(request: Request) -> Response:
        name = request.path_params["name"]
        data = store.get(name) if FILE_ID.match(name) else None
        if data is None:
            raise ApiError(404, f"no image {name!r} here (kept: the last {cfg.url_cache} answered by url)", None)
        return Response(data, media_type="image/png")

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": "dalle2_fast",
                                                         "created": 0}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": MODEL_ID, "queue_depth": batcher.depth,
                             "queue_requests": batcher.waiting_requests(), "queue_limit": cfg.max_queue,
                             "running_batch": batcher.running, **metrics.snapshot()})

    async def config_view(request: Request) -> Response:
        return JSONResponse({"model": MODEL_ID, "size": f"{size}x{size}", "defaults": pipe.settings(),
                             "limits": cfg.public()})

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def api_error(request: Request, e: ApiError) -> Response:
        if e.status < 500 and e.status != 429:
            metrics.request("bad_request")
        return error_response(e)

    async def http_error(request: Request, e: HTTPException) -> Response:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_response(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", None, kind))

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        batcher.stop()

    routes = [
        Route("/v1/images/generations", generations, methods=["POST"]),
        Route("/v1/images/variations", variations, methods=["POST"]),
        Route("/v1/images/edits", edits, methods=["POST"]),
        Route("/v1/images/files/{name}", image_file, methods=["GET"], name="image_file"),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/config", config_view, methods=["GET"]),
        Route("/", index, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: api_error, HTTPException: http_error})
    app.state.batcher, app.state.engine, app.state.metrics, app.state.config = batcher, engine, metrics, cfg
    app.state.store = store
    return app


__all__ = ["create_app", "ImageStore"]
