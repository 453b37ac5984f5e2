"""Screenshot an edgefair output folder's report.html in a real headless browser.

    python scripts/screenshot_report.py OUT_DIR --png docs/img/report.png [--width 1280] [--height 900]
        [--at CSS_SELECTOR] [--full-page] [--step N]

It opens OUT_DIR/report.html from file:// in the system chromium (Debian's /usr/bin/chromium, or
$CHROMIUM) through playwright, never a browser that playwright downloads, and saves a PNG of the
first screen (or of the screen starting at the element `--at` selects, or of the whole page). The
README's screenshot is made with it from the bundled recipe's output:

    edgefair run --out edgefair-out
    python scripts/screenshot_report.py edgefair-out --png docs/img/report-first-screen.png
    python scripts/screenshot_report.py edgefair-out --png docs/img/report-forest.png --step 6 \
        --at section.forest --height 1400

Needs `pip install -c constraints.txt playwright` (in the `test` extra) and chromium
(`apt-get install chromium`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def launch(playwright):
    """The system chromium, headless; playwright's own browser builds are never used."""
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM}: not found (apt-get install chromium, or set CHROMIUM)")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True)


def screenshot(out_dir: str | os.PathLike, png: str | os.PathLike, *, width: int = 1280, height: int = 900,
               at: str | None = None, full_page: bool = False, step: int | None = None) -> Path:
    """Save a PNG of OUT_DIR/report.html as a `width` x `height` screen (or the whole page), with
    step `step` chosen in the forest plots' step selector (a click, as a reader would)."""
    from playwright.sync_api import sync_playwright

    page_path = Path(out_dir).resolve() / "report.html"
    if not page_path.is_file():
        raise FileNotFoundError(f"{page_path}: not found (run `edgefair run --out {out_dir}` first)")
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(page_path.as_uri())
            if step is not None:
                page.click(f"label[for=fs-{int(step)}]")
            if at:
                top = page.eval_on_selector(at, "e => e.getBoundingClientRect().top + window.scrollY")
                page.evaluate("y => window.scrollTo(0, y)", max(top - 8, 0))
            page.screenshot(path=str(png), full_page=full_page)
        finally:
            browser.close()
    return png


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", help="an edgefair output folder (holds report.html)")
    ap.add_argument("--png", required=True, help="where to write the PNG")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--at", help="CSS selector of the element the screen starts at (default: the top)")
    ap.add_argument("--full-page", action="store_true", help="the whole page instead of one screen")
    ap.add_argument("--step", type=int, help="the step to choose in the forest plots' step selector")
    args = ap.parse_args(argv)
    try:
        path = screenshot(args.out_dir, args.png, width=args.width, height=args.height, at=args.at,
                          full_page=args.full_page, step=args.step)
    except (FileNotFoundError, ImportError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
