"""Run several calls at once (one thread each) and collect their results by key: the batching
tests' way of sending concurrent requests to one test client."""
from __future__ import annotations

import threading


def run_concurrently(calls: dict) -> dict:
    """``calls``: key -> zero-argument callable. Returns key -> its result."""
    out = {}

    def go(key, fn):
        out[key] = fn()

    threads = [threading.Thread(target=go, args=(k, fn)) for k, fn in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out
