"""The web app in a real headless browser: scripts/app.py on the tiny 1.2 and 2.0 configs (subprocesses on
127.0.0.1, one per config for the module), driven by Playwright through Debian's Chromium
(run_scripts/install_browser.sh; no browser download).

Text-to-video: the prompt is typed, Generate clicked, the progress bar must show the sampling steps, and the
<video> must load and play (duration > 0, currentTime advancing). Queue: two tabs submit back to back; the second
shows its place in the queue while the first runs, then both finish with their own files. Cancel during sampling:
the page says it was cancelled and the output folder is as it was. Image-to-video: an image is uploaded as the
start frame. Invalid input: the command line's error appears in the page. 2.0: its controls shown (1.2's hidden),
a text-to-video request plays. Screenshots of the pages are saved as test artifacts (test-artifacts/app.png and
app_v2.png, or in $TEST_ARTIFACTS)."""
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
APP_STEPS = 8  # the 1.x app's sampling steps; tests that change the field set it back
CONFIG_V2 = os.path.join(ROOT, "configs/tiny/inference/sample_v2.yaml")
ARTIFACTS = os.environ.get("TEST_ARTIFACTS", os.path.join(ROOT, "test-artifacts"))

# every text the page shows for the progress of a run, recorded as it changes (a MutationObserver)
RECORD_PROGRESS = """() => {
  window.__progress = [];
  new MutationObserver(() => {
    const text = document.body.innerText;
    const found = text.match(/queue: \\d+\\/\\d+|sampling step \\d+\\/\\d+|decoding/g) || [];
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


def start_app(out, weights, config, *flags):
    """scripts/app.py on ``config`` in a subprocess -> (process, url, log file), once the page answers."""
    port = free_port()
    log = open(out / "app.log", "w")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "scripts", "app.py"), "--config", config, "--port", str(port),
         "--mode", "pynative", "--verbose", "0", "--save_dir", str(out), "--random_weights_dir", str(weights), *flags],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        if proc.poll() is not None:
            log.close()
            pytest.fail(f"the app exited with {proc.returncode}: {open(out / 'app.log').read()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url, log
        except OSError:
            if time.time() > deadline:
                proc.terminate()
                pytest.fail("the app did not start within 180 s")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The 1.2 tiny app: {url, out (its output folder)}."""
    out, weights = tmp_path_factory.mktemp("app"), tmp_path_factory.mktemp("weights")
    proc, url, log = start_app(out, weights, CONFIG, "--image_size", "32", "32", "--num_sampling_steps", str(APP_STEPS))
    yield {"url": url, "out": out}
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chrome = pw.chromium.launch(executable_path=chromium(), headless=True)
        outside = []
        yield lambda url: open_tab(chrome, url, outside)
        assert not outside, f"the page made requests off this machine: {outside[:5]}"
        chrome.close()


def open_tab(chrome, url, outside):
    """A new tab (a new app session) on ``url``, recording the progress texts and any request off this machine."""
    tab = chrome.new_page(viewport={"width": 1400, "height": 1000})
    tab.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "data:",
                                                                               "blob:")) else None)
    tab.goto(url)
    tab.wait_for_selector("#prompt textarea")
    tab.evaluate(RECORD_PROGRESS)
    return tab


@pytest.fixture(scope="module")
def page(app, browser):
    return browser(app["url"])


def generate(page, timeout_ms=120_000):
    submit(page)
    return finished(page, timeout_ms)


def submit(page):
    """Click Generate and wait for the page to take the request: the status says Queued, or, for a request that ends
    at once (refused input), already how it ended, other than before the click (the Queued state can then last
    less than the page's polling interval)."""
    page.evaluate("() => { window.__progress = []; }")
    before = page.inner_text("#status")
    page.click("#generate")
    page.wait_for_function("""(before) => {
        const status = document.querySelector('#status').innerText;
        return status.startsWith('Queued') || (status !== before && /^(Done|Error|Cancelled)/.test(status));
    }""", arg=before, timeout=10_000)


def finished(page, timeout_ms=120_000) -> str:
    """The status once the request ended (Done, Error or Cancelled)."""
    page.wait_for_function("() => /^(Done|Error|Cancelled)/.test(document.querySelector('#status').innerText)",
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


def text_to_video_plays(page, screenshot: str) -> tuple[str, str]:
    """Generate from a typed prompt: the progress bar moves, the video plays; the page's screenshot is saved.
    -> (status, command line shown)."""
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
    page.screenshot(path=os.path.join(ARTIFACTS, screenshot), full_page=True)
    return status, command


def test_text_to_video_plays_with_progress(page):
    text_to_video_plays(page, "app.png")


@pytest.mark.extended  # suite time: a further case of a class the default suite checks (make test-full)
def test_two_requests_queue_and_both_finish(page, app, browser):
    """One request runs at a time: a second tab's request waits with its queue position shown, then runs."""
    other = browser(app["url"])
    for tab, prompt in ((page, "a red car on a road."), (other, "a boat at sea.")):
        tab.fill("#prompt textarea", prompt)
        tab.fill("#steps input", "3")  # (suite time: 3 of the app's 8 steps)
    submit(page)
    submit(other)
    other.wait_for_function("() => /queue: 1\\/\\d+/.test(document.querySelector('#video-out').innerText)",
                            timeout=10_000)
    assert page.inner_text("#status").startswith("Queued"), "the first request ended before the second queued"
    first, second = finished(page), finished(other)
    assert first.startswith("Done") and second.startswith("Done"), (first, second)
    progress = other.evaluate("() => window.__progress")
    assert progress[0].startswith("queue") and "sampling step 1/3" in progress, progress  # waited, then ran
    assert first.split()[-1] != second.split()[-1]  # each its own file
    other.close()
    page.fill("#steps input", str(APP_STEPS))


def test_cancel_during_sampling(page, app):
    """Cancel stops the run at the next step; the page says so and nothing is left in the output folder."""
    before = sorted(str(p.relative_to(app["out"])) for p in app["out"].rglob("*") if p.name != "app.log")
    page.fill("#prompt textarea", "a dog runs on the beach.")
    page.fill("#name textarea", "to-cancel")
    # many steps, so that the cancel arrives during sampling: the tiny model's 8 steps take well under a second,
    # and a cancel clicked at step 6 once landed in the decoding (the run stops at its first step after the cancel)
    page.fill("#steps input", "200")
    submit(page)
    page.wait_for_function("() => /sampling step [1-9]\\//.test(document.querySelector('#video-out').innerText)",
                           timeout=60_000)
    page.click("#cancel")
    status = finished(page)
    page.fill("#name textarea", "")
    page.fill("#steps input", str(APP_STEPS))
    assert status.startswith("Cancelled") and "sampling" in status, status
    steps = [t for t in page.evaluate("() => window.__progress") if t.startswith("sampling step")]
    assert "sampling step 200/200" not in steps, steps  # it stopped before the last step
    after = sorted(str(p.relative_to(app["out"])) for p in app["out"].rglob("*") if p.name != "app.log")
    assert after == before


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


@pytest.fixture(scope="module")
def page_v2(tmp_path_factory, browser):
    out, weights = tmp_path_factory.mktemp("app_v2"), tmp_path_factory.mktemp("weights_v2")
    proc, url, log = start_app(out, weights, CONFIG_V2, "--num_steps", "4")
    yield browser(url)
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def test_v2_controls_and_text_to_video(page_v2, page):
    """2.0's controls on the 2.0 page (conditioning types, image guidance, motion score), 1.2's on neither
    2.0's nor 1.2's the other's; a text-to-video request plays and shows its 2.0 command line."""
    assert page_v2.is_visible("#image-guidance") and page_v2.is_visible("#motion-score")
    assert not page_v2.is_visible("#aes") and not page_v2.is_visible("#flow")
    assert not page.is_visible("#image-guidance") and not page.is_visible("#motion-score")
    for cond in ("t2v", "i2v_head", "i2v_loop", "v2v_head", "t2i2v"):
        assert page_v2.get_by_label(cond, exact=True).count() == 1, cond
    page_v2.get_by_label("i2v_loop", exact=True).check()  # start and end frames
    page_v2.wait_for_selector("#end-image", state="visible")
    assert page_v2.is_visible("#start-image") and not page_v2.is_visible("#video-in")
    page_v2.get_by_label("t2v", exact=True).check()
    page_v2.wait_for_selector("#end-image", state="hidden")
    status, command = text_to_video_plays(page_v2, "app_v2.png")
    assert "video_64px/app-0001_prompt_0000.mp4" in status and "sample_v2.yaml" in command, (status, command)
