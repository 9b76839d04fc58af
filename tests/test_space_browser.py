"""The Space in a real browser: Debian's Chromium, headless, driven by Playwright for Python.

Uploads the DHF1K clip through the page's file input, presses the button, and checks what a visitor sees:
an overlay video the browser can play (duration > 0), a gallery of heat maps, the summary with the length
cap's reason. A screenshot of the page is saved under the test's temporary folder and, when
`DTFSAL_SPACE_SCREENSHOT` names a file (e.g. docs/images/space.png), there as well. The model is the
untrained tiny one unless `DTFSAL_SPACE_TEST_MODEL` names another (`demo` for the documentation's screenshot).

Needs `/usr/bin/chromium` (`apt-get install -y chromium`) and the `playwright` package (its bundled browsers
are not used); the test says which one is missing when it skips.
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from space_server import DHF1K_CLIP, running_space

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
RUN_TIMEOUT_MS = 180_000
MODEL = os.environ.get("DTFSAL_SPACE_TEST_MODEL", "random-tiny")

if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium`", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the `playwright` package is not installed: `pip install playwright`"
)
if not DHF1K_CLIP.is_file():
    pytest.skip(f"the DHF1K clip is not at {DHF1K_CLIP}", allow_module_level=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    log = tmp_path_factory.mktemp("space-browser") / "space.log"
    with running_space(log, {"DTFSAL_MODEL": MODEL}) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#run")
            yield page
        finally:
            browser.close()


def _upload(page, path: Path) -> None:
    page.locator("#input-video input[type=file]").set_input_files(str(path))
    page.wait_for_selector(f'#input-video [aria-label="{path.name}"]', timeout=60_000)


def test_upload_predict_and_see_the_results(page, tmp_path):
    _upload(page, DHF1K_CLIP)
    page.click("#run")
    page.wait_for_selector("#overlay-video video", timeout=RUN_TIMEOUT_MS)
    duration = page.wait_for_function(
        "() => { const v = document.querySelector('#overlay-video video');"
        " return v.readyState >= 1 && v.duration > 0 ? v.duration : null; }",
        timeout=60_000,
    ).json_value()
    assert 1.9 <= duration <= 2.2  # the 2 s length cap of the test settings
    page.wait_for_function(
        "() => [...document.querySelectorAll('#heat-maps img')].some(i => i.complete && i.naturalWidth > 0)"
    )
    images = page.locator("#heat-maps img")
    assert images.count() == 8
    assert images.first.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [640, 360]
    summary = page.inner_text("#summary")
    assert f"002.AVI: 60 frames predicted with {MODEL}" in summary
    assert "each video is limited to its first 2 s" in summary
    link = page.locator("#download a[download]")
    assert link.get_attribute("download") == "002_saliency.zip"
    archive = page.request.get(link.get_attribute("href"))
    assert archive.ok
    with zipfile.ZipFile(io.BytesIO(archive.body())) as bundle:
        assert sum(name.startswith("maps/") for name in bundle.namelist()) == 60
    _screenshot(page, tmp_path / "space.png")


def _screenshot(page, path: Path) -> None:
    page.wait_for_timeout(500)  # let the plots finish drawing
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    wanted = os.environ.get("DTFSAL_SPACE_SCREENSHOT")
    if wanted:
        Path(wanted).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, wanted)
