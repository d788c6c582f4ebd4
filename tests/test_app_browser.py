"""The web app in a real headless browser: scripts/app.py on the tiny 1.2 config (a subprocess on 127.0.0.1),
driven by Playwright through Debian's Chromium (run_scripts/install_browser.sh; no browser download).

Text-to-video: the prompt is typed, Generate clicked, the progress bar must show the sampling steps, and the
<video> must load and play (duration > 0, currentTime advancing). Image-to-video: an image is uploaded as the
start frame. Invalid input: the command line's error appears in the page. A screenshot of the page is saved
as a test artifact (test-artifacts/app.png, or $TEST_ARTIFACTS/app.png)."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs/tiny/inference/sample_t2v.yaml")
ARTIFACTS = os.environ.get("TEST_ARTIFACTS", os.path.join(ROOT, "test-artifacts"))

# every text the page shows for the progress of a run, recorded as it changes (a MutationObserver)
RECORD_PROGRESS = """() => {
  window.__progress = [];
  new MutationObserver(() => {
    const text = document.body.innerText;
    const found = text.match(/sampling step \\d+\\/\\d+|decoding/g) || [];
    for (const t of found) if (window.__progress[window.__progress.length - 1] !== t) window.__progress.push(t);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def chromium() -> str:
    path = os.environ.get("OPENSORA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "no Chromium: run `make browser` (Debian: apt-get install chromium) or set OPENSORA_CHROMIUM"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    out, weights = tmp_path_factory.mktemp("app"), tmp_path_factory.mktemp("weights")
    port = free_port()
    log = open(out / "app.log", "w")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "scripts", "app.py"), "--config", CONFIG, "--port", str(port),
         "--mode", "pynative", "--image_size", "32", "32", "--num_sampling_steps", "8", "--verbose", "0",
         "--save_dir", str(out), "--random_weights_dir", str(weights)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, f"the app exited with {proc.returncode}: {open(out / 'app.log').read()[-3000:]}"
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "the app did not start within 180 s"
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), headless=True)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        outside = []
        tab.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:",
                                                                                   "blob:")) else None)
        tab.goto(app_url)
        tab.wait_for_selector("#prompt textarea")
        tab.evaluate(RECORD_PROGRESS)
        yield tab
        assert not outside, f"the page made requests off this machine: {outside[:5]}"
        browser.close()


def generate(page, timeout_ms=120_000):
    before = page.inner_text("#status")
    page.evaluate("() => { window.__progress = []; }")
    page.click("#generate")
    page.wait_for_function("(before) => { const s = document.querySelector('#status').innerText; "
                           "return s !== before && /Done|Error|Cancelled/.test(s); }", arg=before,
                           timeout=timeout_ms)
    return page.inner_text("#status")


def playing_video(page) -> dict:
    """Wait for the result <video>, play it muted and report its duration and whether time advanced."""
    page.wait_for_selector("#video-out video[src]", timeout=30_000)
    return page.evaluate("""async () => {
        const v = document.querySelector('#video-out video');
        if (v.readyState < 1) await new Promise((ok, bad) => { v.onloadedmetadata = ok; v.onerror = bad; });
        v.muted = true;
        await v.play();
        const start = v.currentTime;
        await new Promise(ok => setTimeout(ok, 700));
        return {duration: v.duration, advanced: v.currentTime > start, src: v.src};
    }""")


def test_text_to_video_plays_with_progress(page):
    page.fill("#prompt textarea", "a cat walks along the river.")
    status = generate(page)
    assert status.startswith("Done"), status
    video = playing_video(page)
    assert video["duration"] > 0 and video["advanced"], video
    steps = [t for t in page.evaluate("() => window.__progress") if t.startswith("sampling step")]
    assert len(set(steps)) >= 2, f"the progress bar did not move: {steps}"
    command = page.input_value("#command textarea")
    assert command.startswith("python scripts/inference.py --config") and "'--prompt=a cat walks" in command
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "app.png"), full_page=True)


def test_image_to_video_with_an_uploaded_start_frame(page, tmp_path):
    image = tmp_path / "start.png"
    Image.fromarray((np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)).save(image)
    page.get_by_label("image-to-video").check()
    page.wait_for_selector("#start-image input[type=file]", state="attached")
    page.set_input_files("#start-image input[type=file]", str(image))
    page.wait_for_selector("#start-image img", timeout=30_000)
    status = generate(page)
    assert status.startswith("Done"), status
    assert playing_video(page)["duration"] > 0
    command = page.input_value("#command textarea")
    assert "--reference-path" in command and "--mask-strategy 0" in command


def test_invalid_setting_shows_the_error(page):
    page.get_by_label("text-to-video").check()
    page.fill("#duration input", "0")
    page.keyboard.press("Enter")
    status = generate(page)
    assert status.startswith("Error") and "num_frames" in status, status
