"""``POST /v1/images/edits``: OpenAI's inpainting endpoint over ``UnCLIPPipeline.inpaint``'s RePaint,
through the ASGI test client. A mask says what to fill by transparency (OpenAI's convention) or
by white; the three spellings of one hole (white mask, transparent mask, the image's own alpha)
and the two encodings (multipart, JSON base64) give the same bytes; the kept pixels come back
exactly; requests share batches; every bad upload is a 400 naming its field."""
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from dalle2_fast.serve import ServeConfig, create_app
from dalle2_fast.serve.client import multipart
from tests.serve._concurrent import run_concurrently

testclient = pytest.importorskip("starlette.testclient", reason="the ASGI test client needs httpx")

S = 32  # the tiny pipeline's size


@pytest.fixture(scope="module")
def client(tiny_pipe):
    app = create_app(tiny_pipe, ServeConfig(max_batch=4, max_wait_ms=300, max_n=4))
    with testclient.TestClient(app) as c:
        yield c


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def _case(seed: int = 0, size: int = S):
    """A random RGB image (uint8) and a box hole (bool), fresh per seed."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    hole = np.zeros((size, size), bool)
    x0, y0 = rng.integers(2, size // 2, 2)
    hole[y0 : y0 + size // 3, x0 : x0 + size // 4] = True
    return img, hole


def _white(hole):
    return _png((hole * 255).astype(np.uint8), "L")


def _transparent(hole, rgb=None):
    a = np.where(hole, 0, 255).astype(np.uint8)
    base = rgb if rgb is not None else np.full((*hole.shape, 3), 40, np.uint8)
    return _png(np.dstack([base, a]), "RGBA")


def _post(client, image: bytes, mask: bytes | None = None, **fields):
    files = {"image": ("image.png", image), **({"mask": ("mask.png", mask)} if mask is not None else {})}
    body, ctype = multipart({k: str(v) for k, v in fields.items()}, files)
    return client.post("/v1/images/edits", content=body, headers={"Content-Type": ctype})


def _pngs(r) -> list[bytes]:
    assert r.status_code == 200, r.text
    return [base64.b64decode(d["b64_json"]) for d in r.json()["data"]]


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _meta(png: bytes) -> dict:
    return json.loads(Image.open(io.BytesIO(png)).text["dalle2_fast"])


F = dict(prompt="a red circle", n=2, seed=11, response_format="b64_json")


def test_an_edit_keeps_the_pixels_outside_the_hole_and_fills_it(client):
    img, hole = _case(1)
    pngs = _pngs(_post(client, _png(img), _white(hole), **F))
    assert len(pngs) == 2 and [_meta(p)["seed"] for p in pngs] == [11, 12]
    m = _meta(pngs[0])
    assert m["edit"] is True and m["prompt"] == "a red circle" and m["jumps"] == [5, 5] and m["harmonize"] is True
    for p in pngs:
        out = _pixels(p)
        assert out.shape == (S, S, 3)
        assert np.array_equal(out[~hole], img[~hole])  # kept exactly (8-bit in, 8-bit out)
        assert np.abs(out[hole].astype(int) - img[hole]).mean() > 10  # the hole was redrawn
    assert not np.array_equal(_pixels(pngs[0])[hole], _pixels(pngs[1])[hole])  # seeds differ


def test_one_hole_spelled_three_ways_and_sent_two_ways_gives_the_same_bytes(client):
    img, hole = _case(2)
    white = _pngs(_post(client, _png(img), _white(hole), **F))
    transparent = _pngs(_post(client, _png(img), _transparent(hole), **F))
    own_alpha = _pngs(_post(client, _transparent(hole, img), **F))  # no mask: the image's transparency
    body = dict(F, image=base64.b64encode(_png(img)).decode(),
                mask="data:image/png;base64," + base64.b64encode(_white(hole)).decode())
    as_json = _pngs(client.post("/v1/images/edits", json=body))
    assert white == transparent == own_alpha == as_json
    # an opaque RGBA mask is read by its grey levels, like an L one
    opaque = _png(np.dstack([np.repeat((hole * 255).astype(np.uint8)[..., None], 3, -1),
                             np.full(hole.shape, 255, np.uint8)]), "RGBA")
    assert _pngs(_post(client, _png(img), opaque, **F)) == white


def test_edits_share_a_batch_and_give_the_bytes_they_give_alone(client):
    img_a, hole_a = _case(3)
    img_b, hole_b = _case(4)
    alone_a = _pngs(_post(client, _png(img_a), _white(hole_a), prompt="a blue star", n=1, seed=5,
                          response_format="b64_json"))
    alone_b = _pngs(_post(client, _png(img_b), _white(hole_b), prompt="a red square", n=2, seed=7,
                          response_format="b64_json"))
    before = client.get("/health").json()["batches"]
    def go(img, hole, **kw):
        return lambda: _pngs(_post(client, _png(img), _white(hole), response_format="b64_json", **kw))

    out = run_concurrently({"a": go(img_a, hole_a, prompt="a blue star", n=1, seed=5),
                            "b": go(img_b, hole_b, prompt="a red square", n=2, seed=7)})
    assert out["a"] == alone_a and out["b"] == alone_b
    assert client.get("/health").json()["batches"] - before == 1  # three images of two requests, one pass


def test_nothing_to_fill_answers_the_input_and_everything_to_fill_a_generation(client):
    img, hole = _case(5)
    same = _pngs(_post(client, _png(img), _white(np.zeros_like(hole)), **F))
    assert all(np.array_equal(_pixels(p), img) for p in same)
    gen = _pngs(_post(client, _png(img), _white(np.ones_like(hole)), **F))
    plain = _pngs(client.post("/v1/images/generations", json={k: F[k] for k in ("prompt", "n", "seed",
                                                                                   "response_format")}))
    assert gen == plain


def _rgb_cmyk(img):
    buf = io.BytesIO()
    Image.fromarray(img).convert("CMYK").save(buf, format="JPEG")
    return buf.getvalue()


def _bad_cases():
    img, hole = _case(6)
    grey = (hole * 255).astype(np.uint8)
    grey[0, 0] = 128
    half = np.where(hole, 0, 255).astype(np.uint8)
    half[1, 1] = 100
    coloured = np.zeros((S, S, 3), np.uint8)
    coloured[hole] = (255, 0, 0)
    return [
        # (image, mask, fields, status, param, message)
        (_png(img), _white(hole[:-1]), F, 400, "mask", f"must have the image's size {S}x{S}, got {S}x{S - 1}"),
        (_png(img), _png(grey, "L"), F, 400, "mask", "must be binary"),
        (_png(img), _png(np.dstack([img, half]), "RGBA"), F, 400, "mask", "alpha of 0 or 255 only"),
        (_png(img), _png(coloured), F, 400, "mask", "coloured RGB"),
        (_png(img), None, F, 400, "mask", "no transparent pixels"),
        (_png(img[:, :-4]), None, F, 400, "image", f"must be square"),
        (_rgb_cmyk(img), _white(hole), F, 400, "image", "4 channels of mode 'CMYK'"),
        (b"not a png", _white(hole), F, 400, "image", "not an image"),
        (_png(img), b"", F, 400, "mask", "empty file"),
        (_png(img), _white(hole), {**F, "prompt": " "}, 400, "prompt", "non-empty text"),
        (_png(img), _white(hole), {k: v for k, v in F.items() if k != "prompt"}, 400, "prompt", "missing"),
        (_png(img), _white(hole), {**F, "jumps": "5"}, 400, "jumps", "LENGTH,COUNT"),
        (_png(img), _white(hole), {**F, "n": 9}, 400, "n", "[1, 4]"),
        (_png(img), _white(hole), {**F, "colour": "red"}, 400, "colour", "Unrecognized request argument"),
        (None, _white(hole), F, 400, "image", "missing"),
    ]


@pytest.mark.parametrize("i", range(15))
def test_bad_uploads_are_a_400_naming_the_field(client, i):
    image, mask, fields, status, param, message = _bad_cases()[i]
    if image is None:
        body, ctype = multipart({k: str(v) for k, v in fields.items()}, {"mask": ("m.png", mask)})
        r = client.post("/v1/images/edits", content=body, headers={"Content-Type": ctype})
    else:
        r = _post(client, image, mask, **fields)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and message in err["message"], err


def test_bad_json_and_content_types(client):
    img, hole = _case(7)
    r = client.post("/v1/images/edits", json=dict(F, image="!!not base64!!"))
    assert r.status_code == 400 and r.json()["error"]["param"] == "image" and "base64" in r.json()["error"]["message"]
    r = client.post("/v1/images/edits", json=dict(F, image=base64.b64encode(_png(img)).decode(), mask=7))
    assert r.status_code == 400 and r.json()["error"]["param"] == "mask"
    r = client.post("/v1/images/edits", json=["x"])
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = client.post("/v1/images/edits", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["param"] == "Content-Type"
    body, ctype = multipart(F, {"image": ("i.png", _png(img)), "other": ("o.png", _white(hole))})
    r = client.post("/v1/images/edits", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 400 and r.json()["error"]["param"] == "other"
