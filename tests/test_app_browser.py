"""End to end: `demo/app.py` on a free loopback port, driven in headless Chromium (Debian's chromium
and chromedriver, through selenium; nothing is downloaded).

It checks the plain-language model lines (the configs folded away), uploads a broken file (an error
message on the page, the server keeps serving), then a generated image, picks lqseg_3, runs RASS,
clicks a point for SAM / GleSAM, checks that every result image has the image's size and that a mask
download is the image's size, that a 16 x 16 upload is shown enlarged, and saves screenshots of both tabs
(into $RASS_SCREENSHOT_DIR as well when set: that is how docs/app_*.png are made). The server is
stopped at the end. Without the browser the test skips, saying what to install; `.ci/run` installs it.
"""
from __future__ import annotations

import base64
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no headless browser: install Debian's chromium and chromium-driver "
           "(apt-get install chromium chromium-driver; .ci/run does this)")
QUICKSTART_WEIGHTS = os.path.join(REPO, "output", "quickstart", "model_final.pth")
QUICKSTART_PROMPTABLE = os.path.join(REPO, "output", "quickstart", "promptable", "model_final.pth")
START_TIMEOUT = 240
STEP_TIMEOUT = 120


@pytest.fixture
def server(tmp_path):
    """The demo as a user starts it (no config: the quickstart's or the tiny models); yields its URL.
    Afterwards nothing of the session is left: not in its temporary folder, not in gradio's shared cache."""
    shared_cache, temp = tmp_path / "gradio", tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(shared_cache), TMPDIR=str(temp), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "demo", "app.py"), "--port", "0"], cwd=str(tmp_path),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, found = [], threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "running at http" in line:
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        found.wait(START_TIMEOUT)
        url = next((w for line in lines if "running at http" in line for w in line.split() if w.startswith("http")),
                   None)
        assert url, "the demo did not print its URL:\n" + "".join(lines)
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        proc.send_signal(signal.SIGINT)  # as Ctrl-C
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode is not None
    with pytest.raises(OSError):  # nothing serves the page any more
        urllib.request.urlopen(url, timeout=5)
    assert not [name for name in os.listdir(temp) if name.startswith(("rass_app_", "gradio"))]  # removed at exit
    assert not shared_cache.exists()  # gradio's cache was the demo's private folder


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _full_page_png(driver, path: str) -> None:
    data = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    with open(path, "wb") as f:
        f.write(base64.b64decode(data["data"]))


def _natural_size(driver, css: str):
    from selenium.webdriver.common.by import By

    img = driver.find_element(By.CSS_SELECTOR, css)
    return tuple(driver.execute_script(
        "return arguments[0].complete ? [arguments[0].naturalWidth, arguments[0].naturalHeight] : null", img) or ())


def test_browser_upload_degrade_rass_and_sam(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from rass.app.examples import SCENE_SEED, SCENE_SIZES
    from rass.data.synthetic import render_scene

    wait = WebDriverWait(browser, STEP_TIMEOUT)
    text = lambda elem_id: browser.find_element(By.ID, elem_id).text  # noqa: E731

    def upload(path: str) -> None:
        clear = browser.find_elements(By.CSS_SELECTOR, "#upload button[aria-label='Clear']")
        if clear:
            clear[0].click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(path)

    browser.get(server)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
    models = text("models")  # plain words; the configs and weight files are folded away
    quickstart_sam = os.path.isfile(QUICKSTART_PROMPTABLE)
    methods = ["SAM"] if quickstart_sam else ["SAM", "GleSAM"]  # the quickstart's promptable model is plain SAM
    if os.path.isfile(QUICKSTART_WEIGHTS):
        assert "RASS: the quickstart's small model, trained on synthetic images" in models
    else:
        assert "RASS: demo weights (random) — results are not meaningful" in models
    if quickstart_sam:
        assert "SAM: the quickstart's small model" in models
    else:
        assert "SAM and GleSAM: demo weights (random) — results are not meaningful" in models
    details = browser.find_elements(By.ID, "models_details")
    assert "MODEL." not in models and not (details and details[0].text)  # folded away ...
    browser.find_element(By.XPATH, "//*[@id='models_accordion']//*[contains(text(), 'Technical details')]").click()
    wait.until(lambda d: "MODEL.SAM.CHECKPOINT" in text("models_details") or "quickstart" in text("models_details"))
    if not quickstart_sam:
        assert "MODEL.SAM.CHECKPOINT is empty" in text("models_details")  # ... until opened

    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    upload(str(broken))
    wait.until(lambda d: "Error" in text("status"))
    assert "broken.png: not an image file this demo can read" in text("status")
    assert "Traceback" not in browser.page_source and str(tmp_path) not in text("status")

    image, _ = render_scene(11, min_size=200, max_size=320)
    h, w = image.shape[:2]
    good = tmp_path / "street.png"
    Image.fromarray(image).save(good)
    upload(str(good))  # the server kept serving
    wait.until(lambda d: "Loaded street.png" in text("status"))
    browser.find_element(By.XPATH, "//*[@id='degradation']//label[.//span[text()='lqseg_3']]").click()
    wait.until(lambda d: "lqseg_3" in text("status"))
    wait.until(lambda d: _natural_size(d, "#degraded_input img") == (w, h))

    browser.find_element(By.ID, "run_rass").click()
    wait.until(lambda d: "RASS:" in text("rass_status") or "Error" in text("rass_status"))
    assert "Error" not in text("rass_status"), text("rass_status")
    for elem_id in ("rass_clean", "rass_degraded"):
        wait.until(lambda d: _natural_size(d, f"#{elem_id} img") == (w, h))
    assert browser.find_elements(By.CSS_SELECTOR, "#rass_legend table.rass-legend tbody tr")
    assert "tags (degraded)" in text("rass_info")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#rass_files a[download]")) == 5
    shots = {"rass": str(tmp_path / "app_rass.png"), "sam": str(tmp_path / "app_sam.png")}
    _full_page_png(browser, shots["rass"])

    browser.find_element(By.XPATH, "//button[@role='tab' and contains(., 'SAM / GleSAM')]").click()
    canvas = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#sam_canvas img"))
    wait.until(lambda d: _natural_size(d, "#sam_canvas img") == (w, h))
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    shown_w, shown_h = browser.execute_script("return [arguments[0].clientWidth, arguments[0].clientHeight]", canvas)

    def click_at(x: float, y: float) -> None:  # image pixels -> an offset from the shown image's centre
        ActionChains(browser).move_to_element_with_offset(
            canvas, round((x - w / 2) * shown_w / w), round((y - h / 2) * shown_h / h)).click().perform()

    def points_and_box(line: str):
        return [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", line.split(":", 1)[-1])]

    click_at(w / 2, h / 2)
    wait.until(lambda d: "Segmented" in text("sam_status") or "Error" in text("sam_status"))
    assert "Error" not in text("sam_status"), text("sam_status")
    assert text("sam_prompts").startswith("1 positive / 0 negative point(s): +(")
    assert points_and_box(text("sam_prompts")) == pytest.approx([w / 2, h / 2], abs=2.5)  # clicks land where aimed
    for name in methods:
        wait.until(lambda d: _natural_size(d, f"#sam_{name} img") == (w, h))
    assert "confidence (the model's predicted IoU, 0-1)" in text("sam_metrics")
    assert not re.search(r"(^|\s)-\d", text("sam_metrics"))  # no negative confidence: 0..1, two decimals
    if len(methods) == 2:
        assert "Agreement of the SAM and the GleSAM mask" in text("sam_metrics")
    links = {a.get_attribute("download"): a.get_attribute("href")
             for a in browser.find_elements(By.CSS_SELECTOR, "#sam_files a[download]")}
    assert sorted(links) == sorted(f"street_{m.lower()}_{kind}.png" for m in methods for kind in ("mask", "overlay"))
    with urllib.request.urlopen(links[f"street_{methods[-1].lower()}_mask.png"], timeout=30) as r:
        mask = np.asarray(Image.open(io.BytesIO(r.read())))
    assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
    _full_page_png(browser, shots["sam"])

    browser.find_element(By.XPATH, "//*[@id='click_mode']//label[.//span[text()='box corner']]").click()
    click_at(w * 0.2, h * 0.25)
    wait.until(lambda d: "click the opposite corner" in text("sam_prompts"))
    click_at(w * 0.8, h * 0.7)
    wait.until(lambda d: re.search(r"; box \d", text("sam_prompts")))  # (not "; box corner at")
    box = points_and_box(text("sam_prompts").split("; box ")[1])
    assert box == pytest.approx([w * 0.2, h * 0.25, w * 0.8, h * 0.7], abs=2.5)

    tiny = tmp_path / "tiny.png"  # a 16 x 16 upload is shown enlarged, not as a strip
    Image.fromarray(image[:16, :16]).save(tiny)
    upload(str(tiny))
    wait.until(lambda d: "Loaded tiny.png (16 x 16 pixels, shown enlarged 20x" in text("status"))
    for elem_id in ("clean_input", "degraded_input", "sam_canvas"):
        wait.until(lambda d: _natural_size(d, f"#{elem_id} img") == (320, 320))
    shown = browser.find_element(By.CSS_SELECTOR, "#degraded_input img")
    assert browser.execute_script("return arguments[0].clientHeight", shown) >= 150

    example = browser.find_element(By.XPATH, "//button[.//*[contains(text(), 'synthetic_scene.png')]] | "
                                             "//button[contains(., 'synthetic_scene.png')]")
    example.click()  # a bundled example replaces the upload
    wait.until(lambda d: "Loaded synthetic_scene.png" in text("status"))
    scene, _ = render_scene(SCENE_SEED, *SCENE_SIZES)
    wait.until(lambda d: _natural_size(d, "#clean_input img") == (scene.shape[1], scene.shape[0]))

    for path in shots.values():
        with Image.open(path) as shot:
            assert shot.size[0] >= 1000 and shot.size[1] >= 800
    target = os.environ.get("RASS_SCREENSHOT_DIR")
    if target:
        os.makedirs(target, exist_ok=True)
        for path in shots.values():
            shutil.copyfile(path, os.path.join(target, os.path.basename(path)))
