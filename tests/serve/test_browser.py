"""The web page in a real browser: headless Chromium (Debian's chromium + chromium-driver, driven
by selenium) types a prompt, presses Generate, sees the images with their download links, then
asks for variations of one with a click, then edits another: its Edit button loads it into the
edit form, a box dragged on it marks the hole, a prompt and the Edit button send it to
/v1/images/edits. Skips with the reason when the browser is absent (test_page.py checks the page
without one).

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
          screenshot: str | None = None, timeout: float = 180, edit_prompt: str = "a green triangle") -> dict:
    """Use the page as a person would; returns what it showed."""
    from selenium import webdriver
    from selenium.webdriver.common.action_chains import ActionChains
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
        # edit the generation's first image (the oldest run is the last): a box dragged over its centre
        driver.find_elements(By.CSS_SELECTOR, "#results .run:last-child button.edit")[0].click()
        wait.until(lambda d: d.find_element(By.ID, "edit").is_enabled())
        view = driver.find_element(By.ID, "edit-view")
        ActionChains(driver).move_to_element_with_offset(view, -40, -30).click_and_hold().move_by_offset(70, 50) \
            .release().perform()
        hole = driver.execute_script("return [edit.side, edit.hole.reduce((a, b) => a + b, 0)]")
        driver.find_element(By.ID, "edit-prompt").send_keys(edit_prompt)
        driver.find_element(By.ID, "edit").click()
        wait.until(lambda d: d.execute_script(js_images_ready) == [n, n, n])
        titles = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "#results .run h2")]
        error = driver.find_element(By.ID, "error").text
        if screenshot:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(screenshot)
        return {"status": status, "names": names, "hrefs": hrefs, "titles": titles, "error": error, "hole": hole}
    finally:
        driver.quit()


def test_the_page_generates_varies_and_edits_in_a_real_browser(tiny_pipe, tmp_path):
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
    assert seen["titles"] == ["Edit: a green triangle", "Variations of seed 7",
                              "a red circle above a blue square"]  # newest first
    side, filled = seen["hole"]  # the dragged box: part of the image, not all of it
    assert side == 32 and 0 < filled < side * side
    assert h["requests"]["ok"] == 3 and h["images"] == 9
    assert Path(shot).stat().st_size > 10_000


if __name__ == "__main__":  # the screenshot in docs/: the shipped pipeline, default settings
    from dalle2_fast.pipeline import UnCLIPPipeline
    from dalle2_fast.serve import ServeConfig
    from dalle2_fast.serve.server import BackgroundServer

    out = sys.argv[1] if len(sys.argv) > 1 else "docs/serve.png"
    with BackgroundServer(UnCLIPPipeline.from_pretrained(), ServeConfig(port=0, max_batch=4)) as srv:
        print(drive(srv.url + "/", n=4, seed=3, screenshot=out, timeout=1200))
