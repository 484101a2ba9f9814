"""Running the app with uvicorn: :func:`serve` in the foreground (``dalle2-fast serve``), or
:class:`BackgroundServer` in a thread of this process (tests and the ``serve`` benchmark), on the
loopback address unless told otherwise."""
from __future__ import annotations

import socket
import threading
import time

from dalle2_fast.serve.app import create_app
from dalle2_fast.serve.config import ServeConfig


def _uvicorn_config(app, cfg: ServeConfig, log_level: str):
    import uvicorn

    # one worker process (the model is loaded once); h11, asyncio: the plain, portable stack
    return uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=log_level, access_log=False, workers=1,
                          http="h11", loop="asyncio", lifespan="on", timeout_graceful_shutdown=10)


def serve(pipe, cfg: ServeConfig, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM: uvicorn stops accepting, finishes, exits)."""
    import uvicorn

    uvicorn.Server(_uvicorn_config(create_app(pipe, cfg), cfg, log_level)).run()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """``with BackgroundServer(pipe, cfg) as srv: ... srv.url ...``: the service on a free loopback
    port in a daemon thread; stopped (and its batcher joined) on exit."""

    def __init__(self, pipe, cfg: ServeConfig | None = None, log_level: str = "warning"):
        import dataclasses

        import uvicorn

        cfg = cfg or ServeConfig()
        if cfg.port == 0:
            cfg = dataclasses.replace(cfg, port=free_port(cfg.host))
        self.cfg = cfg
        self.app = create_app(pipe, cfg)
        self.server = uvicorn.Server(_uvicorn_config(self.app, cfg, log_level))
        self.thread = threading.Thread(target=self.server.run, name="dalle2-fast-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.port}"

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > 30:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


__all__ = ["serve", "BackgroundServer", "free_port"]
