"""The service speaks OpenAI's Images API: the official ``openai`` client, pointed at the server,
works unchanged; bad requests get a 4xx in OpenAI's error shape naming the field."""
import base64
import io
import json

import pytest
from PIL import Image

from dalle2_fast.serve import ServeConfig
from dalle2_fast.serve.client import generate, multipart, request, variations
from dalle2_fast.serve.server import BackgroundServer

openai = pytest.importorskip("openai", reason="the API-compatibility test needs the official openai client")


@pytest.fixture(scope="module")
def server(tiny_pipe):
    with BackgroundServer(tiny_pipe, ServeConfig(port=0, max_batch=4, max_wait_ms=5, max_n=4)) as srv:
        yield srv


def _meta(png: bytes) -> dict:
    return json.loads(Image.open(io.BytesIO(png)).text["dalle2_fast"])


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # create_variation: dall-e-2 is retired upstream
def test_the_official_openai_client_works_unchanged(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="not-checked", max_retries=0)
    res = client.images.generate(prompt="a red circle", n=2, size="32x32", response_format="b64_json",
                                 extra_body={"seed": 5, "decoder_steps": 3})
    pngs = [base64.b64decode(d.b64_json) for d in res.data]
    assert len(pngs) == 2 and res.created > 0
    assert [_meta(p)["seed"] for p in pngs] == [5, 6] and _meta(pngs[0])["decoder_steps"] == 3
    assert Image.open(io.BytesIO(pngs[0])).size == (32, 32)
    # the default response_format is a URL, as OpenAI's; it serves the same bytes
    res = client.images.generate(prompt="a red circle", model="dall-e-2", extra_body={"seed": 5, "decoder_steps": 3})
    assert request(res.data[0].url).status == 200
    import urllib.request

    assert urllib.request.urlopen(res.data[0].url).read() == pngs[0]
    # variations of an uploaded PNG (multipart), our fields beside OpenAI's
    var = client.images.create_variation(image=("x.png", pngs[0], "image/png"), n=2, response_format="b64_json",
                                         extra_body={"seed": 9})
    vp = [base64.b64decode(d.b64_json) for d in var.data]
    assert [_meta(p)["seed"] for p in vp] == [9, 10] and _meta(vp[0])["variation"] is True
    assert vp[0] != vp[1]
    # errors reach the client as its own exception types, with our message and the field
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="a red circle", n=5)
    assert e.value.status_code == 400 and e.value.body["param"] == "n" and "n: expected an integer in [1, 4]" in \
        e.value.body["message"]
    assert [m.id for m in client.models.list()] == ["dalle2-fast"]


BAD = [
    # (content type, body, status, param, message)
    ("application/json", b"{not json", 400, None, "not valid JSON"),
    ("text/plain", b'{"prompt": "a"}', 415, "Content-Type", "expected application/json"),
    (None, b'{"prompt": "a"}', 415, "Content-Type", "expected application/json"),
    ("application/json", b'["a"]', 400, None, "expected a JSON object"),
    ("application/json", b"{}", 400, "prompt", "prompt: missing"),
    ("application/json", b'{"prompt": "   "}', 400, "prompt", "prompt: expected non-empty text"),
    ("application/json", json.dumps({"prompt": "x" * 100_000}).encode(), 400, "prompt",
     "100000 characters is longer than the 1000 accepted"),
    ("application/json", b'{"prompt": "a", "n": 0}', 400, "n", "n: expected an integer in [1, 4], got 0"),
    ("application/json", b'{"prompt": "a", "n": 5}', 400, "n", "got 5"),
    ("application/json", b'{"prompt": "a", "n": "2"}', 400, "n", "got '2'"),
    ("application/json", b'{"prompt": "a", "decoder_steps": 0}', 400, "decoder_steps", "[1, 250]"),
    ("application/json", b'{"prompt": "a", "prior_steps": 251}', 400, "prior_steps", "[1, 250], got 251"),
    ("application/json", b'{"prompt": "a", "prior_guidance": -1}', 400, "prior_guidance", "finite number"),
    ("application/json", b'{"prompt": "a", "seed": "abc"}', 400, "seed", "seed: expected an integer"),
    ("application/json", b'{"prompt": "a", "seed": 1.5}', 400, "seed", "got 1.5"),
    ("application/json", b'{"prompt": "a", "seed": -3}', 400, "seed", "got -3"),
    ("application/json", b'{"prompt": "a", "colour": "red"}', 400, "colour",
     "Unrecognized request argument supplied: colour"),
    ("application/json", b'{"prompt": "a", "style": "vivid"}', 400, "style", "not supported by this server"),
    ("application/json", b'{"prompt": "a", "decoder_sampler": "ddpm"}', 400, "decoder_sampler",
     "not a per-request option of this server"),
    ("application/json", b'{"prompt": "a", "decoder_text_guidance": 5}', 400, "decoder_text_guidance",
     "use decoder_guidance"),
    ("application/json", b'{"prompt": "a", "size": "1024x1024"}', 400, "size", "this model draws 32x32"),
    ("application/json", b'{"prompt": "a", "response_format": "png"}', 400, "response_format", "'url' or"),
    ("application/json", b'{"prompt": "a", "model": "gpt-image-1"}', 400, "model", "this server serves"),
]


@pytest.mark.parametrize("ctype,body,status,param,message", BAD)
def test_bad_requests_name_the_field(server, ctype, body, status, param, message):
    r = request(server.url + "/v1/images/generations", "POST", body, {"Content-Type": ctype} if ctype else {})
    assert r.status == status, r.body
    err = r.body["error"]
    assert err["param"] == param and message in err["message"] and err["type"] == "invalid_request_error"


def test_bad_uploads_and_routes(server):
    png = generate(server.url, prompt="a", seed=1, response_format="b64_json").images()[0]
    r = variations(server.url, b"not an image", n=1)
    assert r.status == 400 and r.body["error"]["param"] == "image" and "not an image" in r.body["error"]["message"]
    r = variations(server.url, png, n=1, prompt="not here")
    assert r.status == 400 and r.body["error"]["param"] == "prompt"
    r = variations(server.url, png, n="two")
    assert r.status == 400 and r.body["error"]["param"] == "n"
    body, ctype = multipart({"n": "1"}, {})
    r = request(server.url + "/v1/images/variations", "POST", body, {"Content-Type": ctype})
    assert r.status == 400 and r.body["error"]["param"] == "image" and "missing" in r.body["error"]["message"]
    r = request(server.url + "/v1/images/variations", "POST", b'{"n": 1}', {"Content-Type": "application/json"})
    assert r.status == 415 and r.body["error"]["param"] == "Content-Type"
    big = b"x" * (4 << 20)
    r = variations(server.url, big, n=1)
    assert r.status == 413 and "larger than" in r.body["error"]["message"]
    r = request(server.url + "/v1/images/edits", "POST", b"{}", {"Content-Type": "application/json"})
    assert r.status == 400 and r.body["error"]["param"] == "image" and "missing" in r.body["error"]["message"]
    for path in ("/v1/images/files/..%2F..%2Fetc%2Fpasswd", "/v1/images/files/nothere.png", "/nope"):
        r = request(server.url + path)
        assert r.status == 404 and "error" in r.body, path
    r = request(server.url + "/v1/images/generations")  # GET on a POST route
    assert r.status == 405 and r.body["error"]["message"]


def test_health_config_and_page(server):
    generate(server.url, prompt="a red circle", n=2, seed=3, response_format="b64_json")
    h = request(server.url + "/health").body
    assert h["status"] == "ok" and h["queue_depth"] == 0 and h["images"] >= 2 and h["batches"] >= 1
    assert {"images_per_s", "batch_sizes", "latency_ms", "requests", "queue_limit"} <= set(h)
    c = request(server.url + "/config").body
    assert c["size"] == "32x32" and c["limits"]["max_n"] == 4 and c["defaults"]["decoder_steps"] == 2
    page = request(server.url + "/")
    assert page.status == 200 and b"dalle2-fast" in page.body["raw"] and b"/static/app.js" in page.body["raw"]
    assert request(server.url + "/static/app.js").status == 200


def test_limits_come_from_configuration_and_loopback_is_the_default():
    assert ServeConfig().host == "127.0.0.1"
    from dalle2_fast.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 8000
    with pytest.raises(ValueError, match=r"--max-n: expected an integer in \[1, 1024\], got 0"):
        ServeConfig(max_n=0)
    with pytest.raises(ValueError, match=r"--max-wait-ms: expected a number"):
        ServeConfig(max_wait_ms=float("nan"))
