"""Screenshots of the HTML report for the README, taken in headless Chromium.

    python docs/screenshot.py message_log.db docs/

writes report.png (the top of the report) and report-conversation.png (a run's
conversation opened by a click). Needs the [test] extra (Playwright) and Debian's chromium;
no browser is downloaded.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from pytest_llmexp.cli import main as llmexp

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def screenshots(db: Path, out: Path) -> None:
    chromium = os.environ.get("LLMEXP_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        sys.exit("screenshot.py: no chromium: apt-get install chromium")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "report.html")
        if llmexp(["--db", str(db), "report", "-o", str(report)]) != 0:
            sys.exit("screenshot.py: llmexp report failed")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1500})
            page.goto(report.as_uri())
            page.screenshot(path=str(out / "report.png"))
            page.locator("tr.run").first.scroll_into_view_if_needed()
            page.locator("tr.run").first.click()
            page.screenshot(path=str(out / "report-conversation.png"))
            browser.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    screenshots(Path(sys.argv[1]), Path(sys.argv[2]))
