"""report.html in a real headless browser (Debian's chromium driven by playwright), opened from
file:// as a user opens it, on the output of REAL runs:

- a tiny-model run whose data has a group named `<script>alert(1)</script>`: no console error, no
  request other than the page itself, the group shows as text (no dialog fires), the step selector
  changes the visible plot, nothing runs off a 420 px screen, print shows every step; screenshots at
  1400 and 420 px are saved in the test's folder;
- the bundled recipe (UCI Adult MLP): the first screen of report.html and report.md names the group,
  gate and size of the largest harm, and report.html shows it inside the first 900 px.

Without chromium the browser checks skip, except in CI (`CI` set), where they fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import BASE_RECIPE, REPO, run_cli, write_recipe
from edgefair import render as R

EVIL = "<script>alert(1)</script>"
SCREEN = {"width": 1400, "height": 900}


def _load_screenshot_script():
    spec = importlib.util.spec_from_file_location("screenshot_report", REPO / "scripts" / "screenshot_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shots = _load_screenshot_script()


@pytest.fixture(scope="module")
def chromium():
    """The system chromium's path, when it and playwright are there; else skip (fail in CI)."""
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (pip install -c constraints.txt playwright)"
    if reason is None and not Path(shots.CHROMIUM).exists():
        reason = f"{shots.CHROMIUM} not found (apt-get install chromium)"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must run the browser tests")
        pytest.skip(reason)
    return shots.CHROMIUM


@pytest.fixture
def browser(chromium):
    """The system chromium through playwright (never a browser playwright downloads)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = shots.launch(p)
        yield b
        b.close()


def _open(browser, path: Path, width: int = SCREEN["width"], height: int = SCREEN["height"]):
    """A fresh page with report.html loaded, recording console errors, page errors, dialogs and requests."""
    page = browser.new_page(viewport={"width": width, "height": height})
    seen = {"console": [], "errors": [], "dialogs": [], "requests": []}
    page.on("console", lambda m: seen["console"].append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    return page, seen


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


# ---- a real run whose group is named <script>alert(1)</script> ---------------------------------------

@pytest.fixture(scope="module")
def evil_run(tiny, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    (root / "tiny.pt2").symlink_to(tiny / "tiny.pt2")
    with np.load(tiny / "eval.npz") as f:
        data = {k: f[k] for k in f.files}
    data["g"] = np.where(data["g"] == "b", EVIL, data["g"])
    np.savez(root / "eval.npz", **data)
    (root / "calib.npz").symlink_to(tiny / "calib.npz")
    recipe = write_recipe(root / "r.toml", BASE_RECIPE + """
[[steps]]
kind = "quantize_dynamic"

[[steps]]
kind = "quantize_static"
input = "baseline"
""")
    out = root / "out"
    result = run_cli(["run", str(recipe), "--out", str(out), "-q"])
    assert result.exit_code in (0, 1), result.output
    report = json.loads((out / "report.json").read_text())
    assert f"g={EVIL}" in report["steps"][0]["groups"]
    return out


def test_report_html_in_a_real_browser(chromium, browser, evil_run, tmp_path):
    report = json.loads((evil_run / "report.json").read_text())
    page, seen = _open(browser, evil_run / "report.html")
    # the group is text on the page, in its tables and charts; the only script is edgefair's own
    body = page.inner_text("body")
    assert f"g={EVIL}" in body
    assert page.evaluate("document.scripts.length") == 1
    assert page.locator("code", has_text=f"g={EVIL}").count() > 3
    assert page.locator("svg text", has_text=f"g={EVIL}").count() > 3
    # the step selector: the model to ship's plots first, another step's after a click, no server
    compressed = [s["index"] for s in report["steps"][1:]]
    first = report["selected"]["step"] if report["selected"] else compressed[-1]
    other = next(i for i in compressed if i != first)
    assert page.is_visible(f".p-{first} svg") and not page.is_visible(f".p-{other} svg")
    before = page.inner_text(".panels")
    page.click(f"label[for=fs-{other}]")
    assert page.is_visible(f".p-{other} svg") and not page.is_visible(f".p-{first} svg")
    assert page.inner_text(".panels") != before
    assert page.is_checked(f"#fs-{other}")
    page.screenshot(path=str(tmp_path / "report-1400.png"), full_page=True)
    # print: every step's plots, folded sections open (the page's script)
    page.emulate_media(media="print")
    page.evaluate("window.dispatchEvent(new Event('beforeprint'))")
    assert all(page.is_visible(f".p-{i} svg") for i in compressed)
    assert page.evaluate("[...document.querySelectorAll('details')].every(d => d.open)")
    page.close()

    # the selector is radio buttons and CSS: it works with scripts turned off
    context = browser.new_context(java_script_enabled=False, viewport=SCREEN)
    static = context.new_page()
    static.goto((evil_run / "report.html").resolve().as_uri())
    static.click(f"label[for=fs-{other}]")
    assert static.is_visible(f".p-{other} svg") and not static.is_visible(f".p-{first} svg")
    context.close()

    narrow, seen_narrow = _open(browser, evil_run / "report.html", width=420, height=900)
    # nothing runs off a 420 px screen: wide tables and charts scroll inside their own box
    assert narrow.evaluate("document.documentElement.scrollWidth") <= 420
    narrow.screenshot(path=str(tmp_path / "report-420.png"), full_page=True)
    narrow.close()

    for s in (seen, seen_narrow):
        assert s["console"] == [] and s["errors"] == []
        assert s["dialogs"] == []  # alert(1) never ran
        assert s["requests"] and all(u.startswith("file://") for u in s["requests"]), s["requests"]
        assert all(u == (evil_run / "report.html").resolve().as_uri() for u in s["requests"])
    assert _png_size(tmp_path / "report-1400.png")[0] == 1400
    assert _png_size(tmp_path / "report-420.png")[0] == 420


def test_screenshot_script(chromium, evil_run, tmp_path):
    """The script that makes the README's screenshot, on a real output folder."""
    png = shots.screenshot(evil_run, tmp_path / "img" / "shot.png", width=1000, height=700, at="section.forest", step=2)
    assert _png_size(png) == (1000, 700)
    full = shots.screenshot(evil_run, tmp_path / "full.png", width=420, full_page=True)
    assert _png_size(full)[0] == 420 and _png_size(full)[1] > 2000
    assert shots.main([str(tmp_path / "missing"), "--png", str(tmp_path / "x.png")]) == 2


# ---- the bundled recipe: the largest harm on the first screen -----------------------------------------

@pytest.fixture(scope="module")
def bundled_run(bundled_out) -> Path:
    return bundled_out  # the session's one run of the bundled recipe (conftest.py)


def _expected_largest(report: dict) -> tuple[dict, dict]:
    """The largest observed harm of any compressed step relative to its limit, recomputed here."""
    best = None
    for s in report["steps"][1:]:
        for g in s["gates"]:
            v, t = g.get("value"), g.get("threshold")
            if g["gate"] not in R.GATE_TEXT or v is None or not t:
                continue
            ratio = (1 - v) / (1 - t) if g.get("direction") == "min" else v / t
            if best is None or ratio > best[0]:
                best = (ratio, s, g)
    return best[1], best[2]


def test_bundled_recipe_names_the_largest_harm_first(bundled_run):
    report = json.loads((bundled_run / "report.json").read_text())
    step, gate = _expected_largest(report)
    # the finding: a group of women loses TPR beyond the 2-point limit at a structured step
    assert gate["gate"] == "max_group_tpr_drop" and "sex=Female" in gate["group"] and gate["value"] > 0.05
    words, size = R.gate_words(gate["gate"]), R.fmt_observed(gate)
    md = (bundled_run / "report.md").read_text()
    top = md.split("\n---\n", 1)[0]
    line = next(x for x in top.splitlines() if x.startswith("**Largest harm:**"))
    assert f"{words} {size} at `{gate['group']}`" in line and f"`{step['name']}`" in line
    assert top.index("**Largest harm:**") < top.index("**Thresholds in force**")
    page = (bundled_run / "report.html").read_text()
    first = page[:page.index('<div class="scroll context">')]
    assert (f"<b>Largest harm:</b> {R.html.esc(words)} {R.html.esc(size)} at <code>{R.html.esc(gate['group'])}</code>"
            in first)


def test_bundled_report_first_screen_in_the_browser(chromium, browser, bundled_run, tmp_path):
    report = json.loads((bundled_run / "report.json").read_text())
    _, gate = _expected_largest(report)
    page, seen = _open(browser, bundled_run / "report.html")
    box = page.locator("p.largest").first.bounding_box()
    assert box["y"] + box["height"] <= SCREEN["height"]  # seen without scrolling
    text = page.locator("p.largest").first.inner_text()
    assert gate["group"] in text and R.gate_words(gate["gate"]) in text and R.fmt_observed(gate) in text
    assert seen["console"] == [] and seen["errors"] == [] and seen["dialogs"] == []
    page.screenshot(path=str(tmp_path / "bundled-1400.png"))
    page.close()
