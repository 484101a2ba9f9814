"""Counters of the service for ``GET /health``: requests by outcome, batch sizes, images/s over a
recent window, latency percentiles of recent requests. Every history is bounded."""
from __future__ import annotations

import collections
import threading
import time


def percentile(values, q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    v = sorted(values)
    if not v:
        return None
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


class Metrics:
    def __init__(self, window_s: float = 60.0, keep: int = 1000):
        self.lock = threading.Lock()
        self.started = time.time()
        self.window = window_s
        self.requests = collections.Counter()           # outcome -> count
        self.batch_sizes = collections.Counter()        # images in a batch -> count
        self.recent_batches = collections.deque(maxlen=32)
        self.images = 0
        self.cancelled_images = 0
        self._done = collections.deque()                # (time, images) of recent batches
        self._latency = collections.deque(maxlen=keep)  # seconds, recent successful requests

    def request(self, outcome: str, latency_s: float | None = None) -> None:
        with self.lock:
            self.requests[outcome] += 1
            if latency_s is not None:
                self._latency.append(latency_s)

    def batch(self, images: int, seconds: float) -> None:
        now = time.time()
        with self.lock:
            self.batch_sizes[images] += 1
            self.recent_batches.append({"images": images, "seconds": round(seconds, 4)})
            self.images += images
            self._done.append((now, images))
            while self._done and self._done[0][0] < now - self.window:
                self._done.popleft()

    def cancelled(self, images: int) -> None:
        with self.lock:
            self.cancelled_images += images

    def snapshot(self) -> dict:
        now = time.time()
        with self.lock:
            recent = [n for t, n in self._done if t >= now - self.window]
            span = min(self.window, now - self.started)
            lat = list(self._latency)
            batches = sum(self.batch_sizes.values())
            return {
                "uptime_s": round(now - self.started, 1),
                "requests": dict(self.requests),
                "images": self.images,
                "cancelled_images": self.cancelled_images,
                "images_per_s": round(sum(recent) / span, 3) if span > 0 else 0.0,
                "window_s": self.window,
                "batches": batches,
                "mean_batch_size": round(self.images / batches, 3) if batches else None,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "recent_batches": list(self.recent_batches),
                "latency_ms": {"p50": _ms(percentile(lat, 50)), "p95": _ms(percentile(lat, 95)), "of": len(lat)},
            }


def _ms(s: float | None):
    return None if s is None else round(s * 1e3, 1)


__all__ = ["Metrics", "percentile"]
