"""The web page without a browser: its HTML has every element its script looks up, the forms send
only fields their endpoints accept (the edit form: image, mask, prompt and the settings), and the
page and its script are served. Where Node.js is installed, app.js also runs against a stub DOM
(``page_driver.js``): an image loaded into the edit form, a dragged box becoming a binary mask at
the image's pixels, an uploaded mask thresholded (transparent or white = fill), the request it
posts to /v1/images/edits. The real-browser test is test_browser.py."""
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dalle2_fast.serve.api import EDIT_FIELDS, GENERATION_FIELDS, VARIATION_FIELDS

STATIC = Path(__file__).resolve().parents[2] / "dalle2_fast" / "serve" / "static"
JS = (STATIC / "app.js").read_text()
NODE = shutil.which("node")


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.forms, self.form = [], {}, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.form = a.get("id")
            self.forms[self.form] = []
        if "id" in a:
            self.ids.append(a["id"])
            if self.form is not None:
                self.forms[self.form].append((tag, a))

    def handle_endtag(self, tag):
        if tag == "form":
            self.form = None


def _page() -> _Elements:
    p = _Elements()
    p.feed((STATIC / "index.html").read_text())
    return p


def _function(name: str) -> str:
    """The body of a top-level ``async function name`` / ``function name`` of app.js."""
    start = re.search(rf"^(async )?function {name}\(", JS, re.M).start()
    end = JS.index("\n}\n", start)
    return JS[start:end]


def test_every_element_the_script_uses_is_on_the_page_once():
    page = _page()
    assert len(page.ids) == len(set(page.ids)), sorted(i for i in page.ids if page.ids.count(i) > 1)
    used = set(re.findall(r'\$\("([\w-]+)"\)', JS))
    assert used - set(page.ids) == set()
    assert {"edit-form", "edit-image", "edit-mask", "edit-prompt", "edit-view", "edit", "edit-clear"} <= used


def test_the_edit_form_has_its_inputs():
    form = dict((a["id"], (tag, a)) for tag, a in _page().forms["edit-form"])
    assert form["edit-image"][0] == "input" and form["edit-image"][1]["type"] == "file"
    assert form["edit-mask"][0] == "input" and form["edit-mask"][1]["type"] == "file"
    assert form["edit-prompt"][0] == "textarea" and form["edit-view"][0] == "canvas"
    assert form["edit"][1]["type"] == "submit" and form["edit-clear"][1]["type"] == "button"


def test_forms_send_only_fields_their_endpoints_accept():
    settings_fields = set(json.loads(re.search(r"const FIELDS = (\[.*?\]);", JS).group(1)))
    common = {"n", "seed", "response_format"}
    assert settings_fields | common <= set(GENERATION_FIELDS) & set(EDIT_FIELDS)
    edit = _function("submitEdit")
    assert '"/v1/images/edits"' in edit and "Object.entries(settings())" in edit
    assert set(re.findall(r'form\.append\("(\w+)"', edit)) == {"image", "mask", "prompt", "response_format"}
    var = _function("variations")
    assert '"/v1/images/variations"' in var
    sent = set(re.findall(r'form\.append\("(\w+)"', var)) | set(re.findall(r'"(\w+)"', var.split("for (const k of")[1]
                                                                                    .split("]")[0]))
    assert sent <= set(VARIATION_FIELDS), sent - set(VARIATION_FIELDS)


def test_the_page_and_its_script_are_served(stub):
    testclient = pytest.importorskip("starlette.testclient", reason="the ASGI test client needs httpx")
    from dalle2_fast.serve import ServeConfig, create_app

    with testclient.TestClient(create_app(stub(), ServeConfig())) as c:
        page = c.get("/")
        assert page.status_code == 200 and 'id="edit-form"' in page.text
        js = c.get("/static/app.js")
        assert js.status_code == 200 and js.text == JS


@pytest.mark.skipif(NODE is None, reason="needs Node.js to run app.js against a stub DOM")
def test_the_script_runs_and_its_edit_form_sends_a_binary_mask():
    subprocess.run([NODE, "--check", str(STATIC / "app.js")], check=True, timeout=60)
    out = subprocess.run([NODE, str(Path(__file__).with_name("page_driver.js")), str(STATIC / "app.js"), "40", "32"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["noHole"] == {"posts": 0, "error": "mark the area to redraw: drag a box on the image or upload a mask"}
    assert seen["url"] == "/v1/images/edits" and seen["error"] == "" and seen["titles"] == 1
    assert set(seen["keys"]) <= set(EDIT_FIELDS) and seen["fields"]["prompt"] == "a blue star"
    assert seen["fields"]["n"] == "2" and seen["fields"]["decoder_steps"] == "3"
    # a 40x32 image is cropped to its 32x32 centre; the box dragged over view pixels (64, 32)-(128, 96)
    # of the 256-px view covers image pixels (8, 4)-(16, 12) inclusive: 9 x 9
    assert seen["side"] == seen["imageSide"] == 32
    assert seen["levels"] == [0, 255] and seen["alpha"] == [255]  # binary and opaque: the server's rule
    assert seen["filled"] == 81 and seen["first"] == [8, 4]
    assert seen["maskRule"] and seen["cleared"]
