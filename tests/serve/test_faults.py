"""Load and faults on a stub pipeline whose timing the test controls (loopback only, bounded in
count and time): a full queue answers 429; a client that disconnects cancels its waiting work; an
exception inside one batch fails only that batch's requests; memory stays flat over 1,000
requests; padding to one batch shape keeps bytes independent of the batch."""
import concurrent.futures as cf
import gc
import os
import socket
import time

import pytest

from dalle2_fast.serve import ServeConfig
from dalle2_fast.serve.batcher import Ticket
from dalle2_fast.serve.client import generate, request
from dalle2_fast.serve.server import BackgroundServer


def _wait(cond, timeout=20.0):
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.01)


def test_a_full_queue_answers_429_and_the_server_recovers(stub):
    cfg = ServeConfig(port=0, max_batch=1, max_wait_ms=0, max_queue=3)
    with BackgroundServer(stub(delay=0.3), cfg) as srv:
        with cf.ThreadPoolExecutor(8) as ex:
            replies = list(ex.map(lambda i: generate(srv.url, prompt="a", seed=i, response_format="b64_json"),
                                  range(8)))
        busy = [r for r in replies if r.status == 429]
        assert busy and all(r.status == 200 for r in replies if r not in busy)
        assert len(replies) - len(busy) >= 3  # what fitted the queue (and the batch being drawn) was served
        e = busy[0].body["error"]
        assert e["type"] == "rate_limit_error" and "queue holds 3" in e["message"] and busy[0].headers["retry-after"]
        assert generate(srv.url, prompt="a", seed=0).status == 200  # and it keeps serving
        assert request(srv.url + "/health").body["requests"]["rejected"] == len(busy)


def _raw_post(url, body: bytes) -> socket.socket:
    """Send a request and return the open socket without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return s


def test_a_client_that_disconnects_cancels_its_work(stub):
    pipe = stub(delay=0.6)
    cfg = ServeConfig(port=0, max_batch=1, max_wait_ms=0, max_queue=16, fixed_batch_shape=False)
    with BackgroundServer(pipe, cfg) as srv:
        with cf.ThreadPoolExecutor(1) as ex:
            first = ex.submit(generate, srv.url, prompt="a", seed=1)  # occupies the worker
            _wait(lambda: pipe.drawn or request(srv.url + "/health").body["running_batch"] == 1)
            s = _raw_post(srv.url, b'{"prompt": "b", "n": 3, "seed": 100}')
            _wait(lambda: request(srv.url + "/health").body["queue_depth"] == 3)
            s.close()  # the client gives up while its images wait
            _wait(lambda: request(srv.url + "/health").body["queue_depth"] == 0)
            assert first.result().status == 200
        time.sleep(0.8)  # a batch would have run by now
        h = request(srv.url + "/health").body
        assert h["requests"]["cancelled"] == 1 and h["cancelled_images"] == 3
        assert 100 not in pipe.drawn and h["images"] == 1  # its images were never drawn


def test_an_exception_in_one_batch_fails_only_its_requests(stub):
    cfg = ServeConfig(port=0, max_batch=4, max_wait_ms=200)
    with BackgroundServer(stub(fail_on="boom"), cfg) as srv:
        with cf.ThreadPoolExecutor(3) as ex:
            bad = ex.submit(generate, srv.url, prompt="boom", seed=1)
            mate = ex.submit(generate, srv.url, prompt="fine", seed=2)  # same batch: fails with it
            other = ex.submit(generate, srv.url, prompt="fine", seed=3, decoder_steps=5)  # another batch (settings)
            bad, mate, other = bad.result(), mate.result(), other.result()
        assert bad.status == 500 and mate.status == 500 and other.status == 200
        e = bad.body["error"]
        assert e["type"] == "server_error" and "RuntimeError: stub failure on 'boom'" in e["message"]
        assert generate(srv.url, prompt="fine", seed=4).status == 200  # the server keeps serving
        assert request(srv.url + "/health").body["requests"]["failed"] == 2


@pytest.mark.parametrize("fixed", [True, False])
def test_one_batch_shape_makes_bytes_independent_of_the_batch(stub, fixed):
    """On a pipeline whose floats move with the batch size, padding every batch to max_batch keeps a
    request's bytes the same alone and batched; without it they differ (why padding is the default)."""
    cfg = ServeConfig(port=0, max_batch=4, max_wait_ms=200, fixed_batch_shape=fixed)
    with BackgroundServer(stub(batch_dependent=True), cfg) as srv:
        alone = generate(srv.url, prompt="a", seed=1, response_format="b64_json").images()
        with cf.ThreadPoolExecutor(3) as ex:
            futs = [ex.submit(generate, srv.url, prompt="a", seed=s, response_format="b64_json") for s in (1, 7, 9)]
            together = futs[0].result().images()
        assert (together == alone) == fixed


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_memory_flat_over_1000_requests(stub):
    """1,000 requests (half answered by URL, kept up to url_cache) from 16 clients: the server's
    RSS after the first 300 grows by less than 8 MB to the end."""
    cfg = ServeConfig(port=0, max_batch=8, max_wait_ms=2, max_queue=256, url_cache=64)
    with BackgroundServer(stub(), cfg) as srv:
        def client(c, count):
            for j in range(count):
                r = generate(srv.url, prompt=f"prompt {c} {j}", seed=c * 1000 + j,
                             response_format="url" if j % 2 else "b64_json")
                assert r.status == 200, r.body

        with cf.ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda c: client(c, 19), range(16)))  # 304 requests: warm-up
            warm = _rss()
            list(ex.map(lambda c: client(c, 44), range(16)))  # 704 more
        growth = _rss() - warm
        h = request(srv.url + "/health").body
        assert h["requests"]["ok"] == 1008 and len(srv.app.state.batcher.queue) == 0
        gc.collect()
        live = sum(type(o) is Ticket for o in gc.get_objects())
        assert live <= 16, f"{live} requests' tickets (and their images) are still referenced"
        assert len(srv.app.state.metrics._latency) <= 1000 and len(srv.app.state.store.items) <= 64
    assert growth < 8 * 2**20, f"RSS grew {growth / 2**20:.1f} MB over 704 requests"
