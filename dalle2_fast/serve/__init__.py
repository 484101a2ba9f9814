"""``dalle2-fast serve``: the unCLIP pipeline behind OpenAI's Images API, with dynamic batching
and a web page, on Starlette + uvicorn.

- :mod:`~dalle2_fast.serve.config`: the limits (flags, never requests);
- :mod:`~dalle2_fast.serve.api`: request checks and errors in OpenAI's shape;
- :mod:`~dalle2_fast.serve.engine`: the pipeline at one fixed batch shape;
- :mod:`~dalle2_fast.serve.batcher`: the queue, dynamic batching, cancellation, fault isolation;
- :mod:`~dalle2_fast.serve.metrics`: counters for ``/health``;
- :mod:`~dalle2_fast.serve.app`: the ASGI app and its routes; ``static/``: the web page;
- :mod:`~dalle2_fast.serve.server`: uvicorn in the foreground or in a background thread.

Starlette and uvicorn are imported only here, so the rest of the package runs without them.
"""
from dalle2_fast.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app", "serve", "BackgroundServer"]


def __getattr__(name):  # the ASGI stack loads on first use
    if name == "create_app":
        from dalle2_fast.serve.app import create_app

        return create_app
    if name in ("serve", "BackgroundServer"):
        from dalle2_fast.serve import server

        return getattr(server, name)
    raise AttributeError(name)
