"""Dynamic batching on the tiny real pipeline: requests arriving together share batches, and a
request's images are the same bytes whether it is served alone or batched with others; 64
concurrent clients x 4 requests each all get their right images."""
import concurrent.futures as cf
import time

import pytest

from dalle2_fast.serve import ServeConfig
from dalle2_fast.serve.client import generate, request, variations
from dalle2_fast.serve.server import BackgroundServer

PAYLOADS = [dict(prompt=p, n=n, seed=s) for p, n, s in [
    ("a red circle", 1, 11), ("a blue square", 2, 20), ("a green triangle", 1, 3), ("a yellow star", 3, 40),
    ("a red circle", 1, 12), ("a purple diamond", 2, 7), ("a blue circle", 1, 99), ("a red circle", 2, 11)]]


@pytest.fixture(scope="module")
def server(tiny_pipe):
    cfg = ServeConfig(port=0, max_batch=8, max_wait_ms=150, max_queue=1024, max_n=4)
    with BackgroundServer(tiny_pipe, cfg) as srv:
        yield srv


def _b64(url, **p):
    r = generate(url, response_format="b64_json", **p)
    assert r.status == 200, r.body
    return r.images()


@pytest.fixture(scope="module")
def alone(server):
    """Each payload served alone (one request at a time: every batch holds just it)."""
    return [_b64(server.url, **p) for p in PAYLOADS]


def test_requests_are_identical_alone_or_batched(server, alone):
    before = request(server.url + "/health").body["batches"]
    with cf.ThreadPoolExecutor(len(PAYLOADS)) as ex:  # all at once: they share batches
        together = list(ex.map(lambda p: _b64(server.url, **p), PAYLOADS))
    h = request(server.url + "/health").body
    assert h["batches"] - before < sum(p["n"] for p in PAYLOADS)  # images really shared forward passes
    assert max(int(k) for k in h["batch_sizes"]) > 1
    assert together == alone
    # image k of a request is image 0 of a request with seed + k; the same prompt and seed agree
    assert alone[7][0] == alone[0][0] and alone[7][1] == _b64(server.url, prompt="a red circle", seed=12)[0]
    assert alone[4][0] == alone[7][1]
    assert len({png for imgs in alone for png in imgs}) == sum(p["n"] for p in PAYLOADS) - 2  # others differ


def test_variations_are_identical_alone_or_batched(server, alone):
    src = alone[0][0]
    one = variations(server.url, src, n=2, seed=5, response_format="b64_json").images()
    with cf.ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(variations, server.url, src if i % 2 == 0 else alone[1][0], n=2, seed=5 + i,
                          response_format="b64_json") for i in range(4)]
        got = [f.result().images() for f in futs]
    assert got[0] == one and got[1] != one
    # image 1 of the seed-5 request is image 0 of a seed-6 request of the same source image
    assert variations(server.url, src, n=1, seed=6, response_format="b64_json").images()[0] == one[1]


def test_64_clients_x_4_requests_none_lost_all_right(server, alone):
    def client(c):
        out = []
        for j in range(4):
            k = (c + j) % len(PAYLOADS)
            r = generate(server.url, response_format="b64_json", timeout=300, **PAYLOADS[k])
            out.append((k, r.status, r.images() if r.status == 200 else r.body))
        return out

    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(64) as ex:
        results = [x for res in ex.map(client, range(64)) for x in res]
    assert len(results) == 256 and time.monotonic() - t0 < 300
    assert all(status == 200 for _, status, _ in results), [b for _, s, b in results if s != 200][:3]
    assert all(images == alone[k] for k, _, images in results)
    h = request(server.url + "/health").body
    assert h["queue_depth"] == 0 and h["requests"].get("failed", 0) == 0 and h["mean_batch_size"] > 1
