"""Headless Chromium for the HTML report: the flags this machine needs, and the README's
screenshots.

    python tests/browser.py message_log.db docs/

writes report.png (the top of the report) and report-conversation.png (a run's conversation
opened by a click). Needs the [test] extra (Playwright) and Debian's chromium
(``LLMEXP_CHROMIUM`` names another binary); no browser is downloaded.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# Without the background-networking flags Chromium tries to reach its vendor's services.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str | None:
    return os.environ.get("LLMEXP_CHROMIUM") or shutil.which("chromium")


def launch(playwright: Any, executable: str) -> Any:
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)


def screenshots(db: Path, out: Path, browser: Any = None) -> list[Path]:
    """Write the report of ``db`` and screenshot it into ``out``, in ``browser`` (one
    Playwright browser) or in a Chromium started for it."""
    from pytest_llmexp.cli import main as llmexp

    shots = [out / "report.png", out / "report-conversation.png"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "report.html")
        if llmexp(["--db", str(db), "report", "-o", str(report)]) != 0:
            sys.exit("llmexp report failed")
        if browser is not None:
            _shoot(browser, report, shots)
            return shots
        from playwright.sync_api import sync_playwright

        executable = chromium()
        if executable is None:
            sys.exit("no chromium: apt-get install chromium, or set LLMEXP_CHROMIUM")
        with sync_playwright() as playwright:
            started = launch(playwright, executable)
            _shoot(started, report, shots)
            started.close()
    return shots


def _shoot(browser: Any, report: Path, shots: list[Path]) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1500})
    page.goto(report.as_uri())
    page.screenshot(path=str(shots[0]))
    first = page.locator("tr.run").first
    first.scroll_into_view_if_needed()
    first.click()
    page.locator("#conversation").wait_for(state="visible")
    page.screenshot(path=str(shots[1]))
    page.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.path.insert(0, str(Path(__file__).parent))
    screenshots(Path(sys.argv[1]), Path(sys.argv[2]))
