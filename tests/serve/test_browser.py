"""The web page in a real browser: headless Chromium (Debian's chromium + chromium-driver, driven
by selenium) types a prompt, presses Generate, sees the images with their download links, then
asks for variations of one with a click. Skips with the reason when the browser is absent.

``DALLE2_FAST_SCREENSHOT=docs/serve.png`` also saves the page (how docs/serve.png was made, there
with the shipped pipeline: ``python -m tests.serve.test_browser``)."""
import os
import shutil
import sys
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
missing = [p for p in (CHROMIUM, DRIVER) if not os.path.exists(p)]
pytestmark = pytest.mark.skipif(bool(missing), reason=f"needs Debian's chromium and chromium-driver ({missing} "
                                                       "absent; .ci/run installs them with apt-get)")


def drive(url: str, prompt: str = "a red circle above a blue square", n: int = 4, seed: int = 7,
          screenshot: str | None = None, timeout: float = 180) -> dict:
    """Use the page as a person would; returns what it showed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,1120"):
        opts.add_argument(a)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=DRIVER))  # no driver download
    js_images_ready = ("return [...document.querySelectorAll('#results .run')].map(r => "
                       "[...r.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth > 0).length)")
    try:
        driver.get(url)
        wait = WebDriverWait(driver, timeout)
        wait.until(lambda d: d.find_element(By.ID, "decoder_steps").get_attribute("value"))  # /config read
        driver.find_element(By.ID, "prompt").send_keys(prompt)
        for field, value in (("n", n), ("seed", seed)):
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(str(value))
        driver.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.execute_script(js_images_ready) == [n])
        status = driver.find_element(By.ID, "status").get_attribute("textContent")  # hidden once done
        links = driver.find_elements(By.CSS_SELECTOR, "#results .card a[download]")
        names = [a.get_attribute("download") for a in links]
        hrefs = [a.get_attribute("href") for a in links]
        driver.find_elements(By.CSS_SELECTOR, "#results button.vary")[0].click()  # variations of the first
        wait.until(lambda d: d.execute_script(js_images_ready) == [n, n])
        titles = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#results .run h2")]
        error = driver.find_element(By.ID, "error").text
        if screenshot:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(screenshot)
        return {"status": status, "names": names, "hrefs": hrefs, "titles": titles, "error": error}
    finally:
        driver.quit()


def test_the_page_generates_and_varies_in_a_real_browser(tiny_pipe, tmp_path):
    pytest.importorskip("selenium", reason="the browser test drives Chromium with selenium")
    from dalle2_fast.serve import ServeConfig
    from dalle2_fast.serve.server import BackgroundServer

    with BackgroundServer(tiny_pipe, ServeConfig(port=0, max_batch=4)) as srv:
        shot = os.environ.get("DALLE2_FAST_SCREENSHOT") or str(tmp_path / "page.png")
        seen = drive(srv.url + "/", n=3, seed=7, screenshot=shot)
        h = srv.app.state.metrics.snapshot()
    assert seen["error"] == ""
    assert seen["status"].startswith("Generating")  # the progress line ran
    assert seen["names"] == [f"dalle2-fast-seed-{s}.png" for s in (7, 8, 9)]
    assert all(href.startswith("blob:") for href in seen["hrefs"])
    assert seen["titles"] == ["Variations of seed 7", "a red circle above a blue square"]  # newest first
    assert h["requests"]["ok"] == 2 and h["images"] == 6
    assert Path(shot).stat().st_size > 10_000


if __name__ == "__main__":  # the screenshot in docs/: the shipped pipeline, default settings
    from dalle2_fast.pipeline import UnCLIPPipeline
    from dalle2_fast.serve import ServeConfig
    from dalle2_fast.serve.server import BackgroundServer

    out = sys.argv[1] if len(sys.argv) > 1 else "docs/serve.png"
    with BackgroundServer(UnCLIPPipeline.from_pretrained(), ServeConfig(port=0, max_batch=4)) as srv:
        print(drive(srv.url + "/", n=4, seed=3, screenshot=out, timeout=1200))
