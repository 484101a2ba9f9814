"""``POST /v1/images/variations`` decodes, like ``UnCLIPPipeline.variations``, from the DDIM-inverted
latent of the uploaded image by default (``latent=noise``: from fresh seeded noise), through the
ASGI test client: the server's images match the pipeline's, the inversion (computed per request,
alone) keeps concurrent requests batched and their bytes what they are alone, and ``latent`` /
``eta`` are checked with a 400 naming the field."""
import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dalle2_fast.serve import ServeConfig, create_app
from dalle2_fast.serve.client import multipart
from tests.serve._concurrent import run_concurrently

testclient = pytest.importorskip("starlette.testclient", reason="the ASGI test client needs httpx")

S = 32  # the tiny pipeline's size


def _client(pipe, max_batch):
    return testclient.TestClient(create_app(pipe, ServeConfig(max_batch=max_batch, max_wait_ms=300, max_n=4)))


@pytest.fixture(scope="module")
def client(tiny_pipe):
    with _client(tiny_pipe, 4) as c:
        yield c


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (S, S, 3), dtype=np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _post(client, image: bytes, **fields):
    body, ctype = multipart({k: str(v) for k, v in fields.items()}, {"image": ("image.png", image)})
    return client.post("/v1/images/variations", content=body, headers={"Content-Type": ctype})


def _pngs(r) -> list[bytes]:
    assert r.status_code == 200, r.text
    return [base64.b64decode(d["b64_json"]) for d in r.json()["data"]]


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _meta(png: bytes) -> dict:
    return json.loads(Image.open(io.BytesIO(png)).text["dalle2_fast"])


def _pipeline(pipe, arr: np.ndarray, seed: int, **kw) -> np.ndarray:
    """The pipeline's variation (n=1: batch 1, as the server's max_batch=1 draws it) as uint8 pixels."""
    x = torch.from_numpy(arr).permute(2, 0, 1).float().div(127.5).sub(1.0)
    y = pipe.variations(x, n=1, seed=seed, **kw)[0]
    return (y * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy().astype(np.int16)


@pytest.mark.parametrize("latent", ["inverted", "noise"])
def test_the_server_draws_the_pipelines_variations(tiny_pipe, latent):
    arr = _image(1)
    fields = dict(n=2, seed=5, response_format="b64_json", **({} if latent == "inverted" else {"latent": latent}))
    with _client(tiny_pipe, 1) as c:  # batch 1, as the pipeline's n=1 calls below
        pngs = _pngs(_post(c, _png(arr), **fields))
    for k, png in enumerate(pngs):
        want = _pipeline(tiny_pipe, arr, 5 + k, latent=latent)
        assert np.abs(_pixels(png) - want).max() <= 1  # one rounding level at most
        meta = _meta(png)
        assert meta["latent"] == latent and meta["seed"] == 5 + k and meta["variation"] is True
        assert ("eta" in meta) == (latent == "inverted")
    other = _pipeline(tiny_pipe, arr, 5, latent="noise" if latent == "inverted" else "inverted")
    assert np.abs(_pixels(pngs[0]) - other).max() > 8  # the latent matters: not the other one's image


def test_eta_is_the_pipelines(tiny_pipe):
    arr = _image(2)
    got = {}
    with _client(tiny_pipe, 1) as c:
        for eta in (0, 3):
            png = _pngs(_post(c, _png(arr), n=1, seed=3, eta=eta, response_format="b64_json"))[0]
            assert _meta(png)["eta"] == eta
            got[eta] = _pixels(png)
            assert np.abs(got[eta] - _pipeline(tiny_pipe, arr, 3, eta=eta)).max() <= 1
    assert np.abs(got[0] - got[3]).max() > 1  # more than rounding apart


def test_variations_share_a_batch_and_give_the_bytes_they_give_alone(client):
    a, b = _png(_image(3)), _png(_image(4))
    alone_a = _pngs(_post(client, a, n=1, seed=5, response_format="b64_json"))
    alone_b = _pngs(_post(client, b, n=2, seed=7, response_format="b64_json"))
    before = client.get("/health").json()["batches"]
    def go(image, **kw):
        return lambda: _pngs(_post(client, image, response_format="b64_json", **kw))

    out = run_concurrently({"a": go(a, n=1, seed=5), "b": go(b, n=2, seed=7)})
    assert out["a"] == alone_a and out["b"] == alone_b
    assert client.get("/health").json()["batches"] - before == 1  # three images of two requests, one pass
    assert len({*alone_a, *alone_b}) == 3
    # a request with another latent or eta is not batched with these (its settings differ), and differs
    assert _pngs(_post(client, a, n=1, seed=5, latent="noise", response_format="b64_json")) != alone_a


@pytest.mark.parametrize("fields, param, message", [
    (dict(latent="inverse"), "latent", "inverted, noise"),
    (dict(latent=""), "latent", "expected one of"),
    (dict(eta="-1"), "eta", "expected a finite number"),
    (dict(eta="nan"), "eta", "expected a finite number"),
    (dict(eta="lots"), "eta", "expected a number"),
    (dict(latent="noise", eta="0.5"), "eta", "only with latent=inverted"),
    (dict(decoder_eta="0.5"), "decoder_eta", "not a per-request option"),
])
def test_bad_latent_and_eta_are_a_400_naming_the_field(client, fields, param, message):
    r = _post(client, _png(_image(5)), n=1, **fields)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and message in err["message"], err


def test_a_decoder_that_cannot_invert_asks_for_latent_noise(stub):
    with _client(stub(), 2) as c:  # the stub pipeline's decoder has no invert
        r = _post(c, _png(_image(6)), n=1)
        assert r.status_code == 400 and "latent=noise" in r.json()["error"]["message"], r.text
        pngs = _pngs(_post(c, _png(_image(6)), n=2, seed=4, latent="noise", response_format="b64_json"))
    assert [_meta(p)["seed"] for p in pngs] == [4, 5] and _meta(pngs[0])["latent"] == "noise"
