"""The report as a reader sees it: the demo's runs rendered into index.html and loaded in
headless Chromium (the Debian ``chromium`` package), which checks what a parser cannot: every
figure decodes, every in-page link lands, and the summary with its verdict shows without
scrolling. Chromium is driven from the command line only (no Python dependency): a copy of the
page gets a test-only script that writes its findings into a ``<pre id="probe">``, and
``--dump-dom`` hands the page back after it has loaded. Skips where no browser is installed."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tritonlab.report.render import write_report

DEMO = Path(__file__).resolve().parent.parent / "reports" / "demo"
WIDTH, HEIGHT = 1400, 900

# Runs after the page has loaded (images decoded); writes the findings as JSON into the DOM.
PROBE = """
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return {alt: img.alt, ok: img.complete && img.naturalWidth > 0};
  });
  var links = Array.prototype.map.call(document.querySelectorAll('a[href^="#"]'),
    function (a) {
      var id = decodeURIComponent(a.getAttribute("href").slice(1));
      return {href: a.getAttribute("href"),
              ok: id !== "" && document.getElementById(id) !== null};
    });
  function top(id) {
    var el = document.getElementById(id);
    return el ? el.getBoundingClientRect().top : null;
  }
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images: images, links: links, viewport: window.innerHeight,
                                    summary_top: top("summary"), verdict_top: top("verdict")});
  document.body.appendChild(out);
});
"""


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless browser installed (apt-get install chromium): the browser lane "
                "needs one")


def _chromium(browser: str, *args: str) -> str:
    cmd = [browser, "--headless=new", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
           f"--window-size={WIDTH},{HEIGHT}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> Path:
    _browser()  # skip before spending seconds on a report no browser will open
    if not (DEMO / "sweep").is_dir() or not (DEMO / "contrast").is_dir():
        pytest.skip(f"no demo runs under {DEMO} (make demo writes them)")
    return write_report([DEMO / "sweep", DEMO / "contrast"],
                        tmp_path_factory.mktemp("report") / "rep").html


@pytest.fixture(scope="module")
def probe(demo_report, tmp_path_factory) -> dict:
    browser = _browser()
    page = demo_report.read_text()
    end = page.rindex("</body>")
    copy = tmp_path_factory.mktemp("probe") / "index.html"
    copy.write_text(page[:end] + f"<script>{PROBE}</script>" + page[end:])
    # virtual time runs the page to its load event without waiting in wall-clock time
    dom = _chromium(browser, "--virtual-time-budget=20000", "--dump-dom", copy.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe script did not run (no #probe in the dumped DOM)"
    return json.loads(html.unescape(found.group(1)))


def test_every_image_loads(probe):
    assert probe["images"], "the report shows no figure"
    broken = [i for i in probe["images"] if not i["ok"]]
    assert not broken, f"{len(broken)} of {len(probe['images'])} images do not load: {broken}"


def test_every_internal_link_resolves(probe):
    assert probe["links"], "the report has no in-page link (no table of contents)"
    dangling = sorted({link["href"] for link in probe["links"] if not link["ok"]})
    assert not dangling, f"links to no element: {dangling}"


def test_summary_and_verdict_in_first_viewport(probe):
    # the window's inner height: a little under HEIGHT, which counts the window's frame
    viewport = probe["viewport"]
    assert HEIGHT * 0.8 < viewport <= HEIGHT
    for name in ("summary", "verdict"):
        top = probe[f"{name}_top"]
        assert top is not None, f"the page has no #{name}"
        assert 0 <= top < viewport, f"#{name} starts at {top}px, below the first viewport"


def test_screenshot(demo_report, tmp_path):
    shot = tmp_path / "report.png"
    _chromium(_browser(), f"--screenshot={shot}", demo_report.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (WIDTH, HEIGHT)
