"""Dynamic batching: requests that arrive close together share forward passes.

A request of ``n`` images is ``n`` queue entries (image k from seed + k). One worker thread owns
the model: it takes the oldest waiting image, and gathers up to ``max_batch`` waiting images with
the same kind and settings (they must share steps and guidance to share a pass), waiting at most
``max_wait`` from that oldest image's arrival for more to come; then it runs the batch, encodes
each image as PNG and hands every finished request its bytes. The queue is bounded (``submit``
raises :class:`QueueFull` beyond ``max_queue`` waiting images: a 429), a cancelled request's
waiting images are dropped before they are drawn, and an exception inside a batch fails that
batch's requests only: the worker goes on with the next.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field

from dalle2_fast.serve.api import ImageRequest
from dalle2_fast.serve.metrics import Metrics


class QueueFull(Exception):
    pass


class BatchFailed(Exception):
    """The batch holding some of a request's images raised."""


@dataclass(eq=False)
class Ticket:
    """A request in flight: its checked request, resolved settings, and the PNGs done so far."""

    request: ImageRequest
    settings: dict
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    meta: dict = field(default_factory=dict)  # written into every PNG of the request
    t_submit: float = field(default_factory=time.monotonic)
    results: list = field(default_factory=list)
    remaining: int = 0
    cancelled: bool = False
    embed: object = None  # a variation's z_i, computed once by the worker
    latent: object = None  # a variation's inverted x_T (latent='inverted'), computed once by the worker

    @property
    def key(self) -> tuple:
        return (self.request.kind, tuple(sorted(self.settings.items())))

    def seed(self, k: int) -> int:
        return self.request.seed + k

    def _settle(self, value=None, error: BaseException | None = None) -> None:
        def settle():
            if not self.future.done():
                self.future.set_exception(error) if error is not None else self.future.set_result(value)

        self.loop.call_soon_threadsafe(settle)


class Batcher:
    def __init__(self, engine, max_batch: int, max_wait_s: float, max_queue: int, metrics: Metrics | None = None):
        self.engine = engine
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_s, max_queue
        self.metrics = metrics or Metrics()
        self.cond = threading.Condition()
        self.queue: collections.deque = collections.deque()  # (ticket, k)
        self.running = 0  # images in the batch being drawn
        self._closing = False
        self._thread: threading.Thread | None = None

    # ---- the event loop's side --------------------------------------------------------------
    def submit(self, request: ImageRequest, settings: dict, meta: dict) -> Ticket:
        loop = asyncio.get_running_loop()
        t = Ticket(request, settings, loop.create_future(), loop, meta)
        t.results = [None] * request.n
        t.remaining = request.n
        with self.cond:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if len(self.queue) + request.n > self.max_queue:
                raise QueueFull(f"{len(self.queue)} images are waiting and this request adds {request.n}; the queue "
                                f"holds {self.max_queue}")
            self.queue.extend((t, k) for k in range(request.n))
            self.cond.notify()
        return t

    def cancel(self, t: Ticket) -> int:
        """Drop the request's waiting images (those in a running batch finish unused); returns how many."""
        with self.cond:
            t.cancelled = True
            before = len(self.queue)
            self.queue = collections.deque(e for e in self.queue if e[0] is not t)
            dropped = before - len(self.queue)
        self.metrics.cancelled(dropped)
        t._settle(error=asyncio.CancelledError())
        return dropped

    @property
    def depth(self) -> int:
        return len(self.queue)

    def waiting_requests(self) -> int:
        with self.cond:
            return len({id(e[0]) for e in self.queue})

    # ---- the worker ---------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="dalle2-fast-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self.cond:
            self._closing = True
            left = list(self.queue)
            self.queue.clear()
            self.cond.notify_all()
        for t in {id(e[0]): e[0] for e in left}.values():
            t._settle(error=BatchFailed("the server is shutting down"))
        if self._thread is not None:
            self._thread.join(timeout)

    def _take(self) -> list | None:
        """Wait for the next batch: the oldest image and up to max_batch - 1 others of its kind and
        settings, gathered until the batch is full or the oldest has waited max_wait."""
        with self.cond:
            while True:
                if self._closing:
                    return None
                if not self.queue:
                    self.cond.wait()
                    continue
                head = self.queue[0][0]
                key = head.key
                same = [e for e in self.queue if e[0].key == key][: self.max_batch]
                left = head.t_submit + self.max_wait - time.monotonic()
                if len(same) >= self.max_batch or left <= 0:
                    taken = {id(e) for e in same}
                    self.queue = collections.deque(e for e in self.queue if id(e) not in taken)
                    self.running = len(same)
                    return same
                self.cond.wait(left)

    def _work(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._run(batch)
            finally:
                with self.cond:
                    self.running = 0

    def _run(self, batch: list) -> None:
        tickets = list({id(t): t for t, _ in batch}.values())
        t0 = time.perf_counter()
        try:
            images = self._draw(batch)
            from dalle2_fast.data.images import png_bytes

            pngs = [None if t.cancelled else png_bytes(img, {**t.meta, "seed": t.seed(k)})
                    for (t, k), img in zip(batch, images)]
        except Exception as e:  # noqa: BLE001 - one batch's failure must not stop the server
            err = BatchFailed(f"{type(e).__name__}: {e}"[:500])
            with self.cond:  # its requests' other images will not be needed
                self.queue = collections.deque(x for x in self.queue if not any(x[0] is t for t in tickets))
            for t in tickets:
                t._settle(error=err)
            return
        self.metrics.batch(len(batch), time.perf_counter() - t0)
        for (t, k), png in zip(batch, pngs):
            if t.cancelled:
                continue
            t.results[k] = png
            t.remaining -= 1
            if t.remaining == 0:
                t._settle(value=t.results)

    def _draw(self, batch: list):
        kind = batch[0][0].request.kind
        settings = batch[0][0].settings
        seeds = [t.seed(k) for t, k in batch]
        if kind == "generation":
            return self.engine.generate([t.request.prompt for t, _ in batch], seeds, settings)
        import torch

        if kind == "edit":
            return self.engine.edit([t.request.prompt for t, _ in batch],
                                    torch.stack([t.request.image for t, _ in batch]),
                                    torch.stack([t.request.fill for t, _ in batch]), seeds, settings)
        if kind == "unchanged":  # an edit with nothing to fill: the input, as the pipeline answers it
            return [t.request.image for t, _ in batch]

        inverted = settings.get("latent") == "inverted"
        for t, _ in batch:  # per request, alone: the same z_i and x_T whatever the batch
            if t.embed is None:
                t.embed = self.engine.image_embed(t.request.image)
            if inverted and t.latent is None:
                t.latent = self.engine.invert(t.request.image, t.embed, settings)
        latents = torch.stack([t.latent for t, _ in batch]) if inverted else None
        return self.engine.variations(torch.stack([t.embed for t, _ in batch]), seeds, settings, latents)


__all__ = ["Batcher", "Ticket", "QueueFull", "BatchFailed"]
