"""Fixtures of the browser tests: a static web server for a page's origin, and headless Chromium.

Chromium is Debian's (``make test-deps`` installs it); Playwright drives it through
``executable_path`` and never downloads a browser. Segment's browser SDK comes from npm into
``.cache/npm`` (``make test-deps`` again).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
SEGMENT_SDK_DIR = ROOT / ".cache/npm/node_modules/@segment/analytics-next/dist/umd"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class StaticSite:
    """Files of ``root`` served on 127.0.0.1 at a free port (a page's origin)."""

    def __init__(self, root: Path):
        self.root = root
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> StaticSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def site_factory(tmp_path: Path) -> Iterator[Any]:
    """Start static sites (each its own origin) whose root holds the SDK bundle under ``/sdk``."""
    if not (SEGMENT_SDK_DIR / "index.js").exists():
        pytest.fail("Segment's browser SDK is missing: run `make test-deps` (npm into .cache/npm)")
    sites: list[StaticSite] = []

    def start(name: str) -> StaticSite:
        root = tmp_path / name
        root.mkdir()
        (root / "sdk").symlink_to(SEGMENT_SDK_DIR, target_is_directory=True)
        site = StaticSite(root).__enter__()
        sites.append(site)
        return site

    yield start
    for site in sites:
        site.__exit__()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Debian's headless Chromium, driven by Playwright."""
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: run `make test-deps` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
