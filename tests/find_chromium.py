"""Which Chromium the real-browser tests drive, and getting one before `make test`.

The browser journey (tests/test_browser.py) is part of the suite, so a machine without a
browser must not pass by skipping it. Order of preference:

1. ``$LCODEC_CHROMIUM`` (a path to a Chromium binary), if set;
2. Debian's ``/usr/bin/chromium`` (``apt-get install chromium``; what CI installs);
3. Playwright's own Chromium (``playwright install chromium``, which needs the internet).

``python tests/find_chromium.py`` (run by ``make test`` before pytest) finds one, tries
``playwright install chromium`` when none is found, and otherwise exits 1 with what to do.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
HOW_TO = ("the real-browser tests need Chromium: `apt-get install -y chromium` (Debian/Ubuntu), "
          "or `python -m playwright install chromium` on a machine with internet, or "
          "LCODEC_CHROMIUM=/path/to/chromium")


def chromium_path() -> str | None:
    """The Chromium binary to launch; None when there is none."""
    chosen = os.environ.get("LCODEC_CHROMIUM")
    if chosen:
        return chosen if os.access(chosen, os.X_OK) else None
    if os.access(DEBIAN_CHROMIUM, os.X_OK):
        return str(DEBIAN_CHROMIUM)
    return playwright_chromium()


def playwright_chromium() -> str | None:
    """Playwright's downloaded Chromium, if it is installed."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    try:
        with sync_playwright() as playwright:
            path = playwright.chromium.executable_path
    except Exception:  # no driver, or a broken install: treat as "no browser"
        return None
    return path if path and os.access(path, os.X_OK) else None


def main() -> int:
    path = chromium_path()
    if path is None and not os.environ.get("LCODEC_CHROMIUM"):
        print("No Chromium found; trying `playwright install chromium`...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "playwright", "install", "chromium"], check=False)
        path = chromium_path()
    if path is None:
        print(f"make test: no browser: {HOW_TO}.", file=sys.stderr)
        return 1
    print(f"browser tests use {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
