"""Render a local HTML file in headless Chromium, offline, and report what rendered.

Test helper, not part of the package. It drives the system Chromium (``/usr/bin/chromium``, or
``$NEUROPLASTIC_CHROMIUM``) through the ``playwright`` Python package; it never downloads a
browser, so never run ``playwright install``. Every request to a URL that is not local
(``file:``, ``data:``, ``blob:``, ``about:``) is recorded and aborted.

    from browser import render  # pytest puts tests/ on sys.path (no tests/__init__.py)

    rendered = render(path, selectors=[".np-cv"])
    assert rendered.console_errors == []
    assert rendered.external_requests == []
    assert rendered.count(".np-cv") == 3

Several pages in one browser: ``with Chromium() as chrome: chrome.render(a); chrome.render(b)``.
If playwright or Chromium is missing, a browser test is skipped with one line saying how to get
it; under CI (``CI`` set) it fails instead (``BrowserUnavailable``), so a broken install cannot
pass as skipped tests.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-default-apps",
    "--disable-extensions",
    # Belt and braces: even a request that slipped past the router could not resolve a host.
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
LOCAL_SCHEMES: tuple[str, ...] = ("file:", "data:", "blob:", "about:")
_CANDIDATES: tuple[str, ...] = ("/usr/bin/chromium", "chromium", "chromium-browser")


class BrowserUnavailable(RuntimeError):
    """playwright or a system Chromium is missing."""


@dataclass(frozen=True)
class Rendered:
    """A snapshot of a page after it finished rendering (the browser is closed)."""

    url: str
    #: ``document.documentElement.outerHTML`` after rendering.
    dom: str
    #: ``document.body.innerText``: the text a reader sees (collapsed <details> excluded).
    text: str
    title: str
    #: Console messages of type "error", and uncaught exceptions / unhandled rejections.
    console_errors: list[str]
    #: Every console message, as "type: text".
    console_messages: list[str]
    #: Every URL the page requested (the page itself included).
    requests: list[str]
    #: Requests to non-local URLs (not file:, data:, blob:, about:), all aborted.
    external_requests: list[str]
    #: Requests that failed, "url (reason)"; aborted external requests are among them.
    failed_requests: list[str]
    #: Number of elements matching each selector passed to ``render(selectors=...)``.
    counts: dict[str, int] = field(default_factory=dict)
    #: Results of the JavaScript expressions passed to ``render(evaluate=...)``.
    values: dict[str, Any] = field(default_factory=dict)
    #: Whether the DOM stopped changing before ``wait_ms`` ran out.
    settled: bool = True
    elapsed_s: float = 0.0

    def count(self, selector: str) -> int:
        """Elements matching ``selector``; it must have been passed to ``render(selectors=)``."""
        try:
            return self.counts[selector]
        except KeyError:
            raise KeyError(f"{selector!r} was not counted: pass selectors=[{selector!r}]") from None


def chromium_executable() -> str:
    """The system Chromium: ``$NEUROPLASTIC_CHROMIUM``, else /usr/bin/chromium or PATH."""
    override = os.environ.get("NEUROPLASTIC_CHROMIUM")
    candidates = (override,) if override else _CANDIDATES
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    _unavailable(
        f"No Chromium found (tried {', '.join(candidates)}). Install the system package "
        "(Debian: apt-get install chromium) or set NEUROPLASTIC_CHROMIUM to its path; "
        "do not let Playwright download a browser."
    )
    raise AssertionError("unreachable")


def _unavailable(message: str) -> None:
    """Skip the browser test (fail under CI, where the browser must be there)."""
    if os.environ.get("CI"):
        raise BrowserUnavailable(message)
    import pytest

    pytest.skip(message)


class Chromium:
    """One headless Chromium (fresh temporary profile) that renders pages one at a time."""

    def __init__(self, executable_path: str | None = None) -> None:
        self.executable_path = executable_path
        self._playwright: Any = None
        self._browser: Any = None

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            _unavailable(
                "Browser tests need the `playwright` Python package: pip install -e '.[test]' "
                "(it drives the system Chromium; never run `playwright install`)."
            )
        executable = self.executable_path or chromium_executable()
        self._playwright = sync_playwright().start()
        try:
            # launch() gives every browser a fresh temporary user-data-dir and deletes it on close.
            self._browser = self._playwright.chromium.launch(
                executable_path=executable, headless=True, args=list(CHROMIUM_ARGS)
            )
        except BaseException:
            self._playwright.stop()
            self._playwright = None
            raise

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        if self._playwright is not None:
            self._playwright.stop()
            self._playwright = None

    def render(
        self,
        path: str | os.PathLike[str],
        wait_ms: int = 10_000,
        *,
        settle_ms: int = 300,
        wait_for: str | None = None,
        selectors: Iterable[str] = (),
        evaluate: Mapping[str, str] | None = None,
        screenshot: str | os.PathLike[str] | None = None,
        viewport: tuple[int, int] = (1280, 900),
    ) -> Rendered:
        """Open ``path`` from file://, wait until it has rendered, and snapshot it.

        Waits for the load event, then for the JavaScript predicate ``wait_for`` if given, then
        until the DOM has not changed for ``settle_ms``; ``wait_ms`` bounds the whole wait.
        ``evaluate`` maps names to JavaScript expressions whose (JSON-able) values are returned
        in ``Rendered.values``. ``screenshot`` saves a full-page PNG.
        """
        if self._browser is None:
            raise RuntimeError("Chromium is not started: use `with Chromium() as chrome:`")
        start = time.monotonic()
        deadline = start + wait_ms / 1000
        url = Path(path).resolve().as_uri()
        errors: list[str] = []
        messages: list[str] = []
        requests: list[str] = []
        external: list[str] = []
        failed: list[str] = []

        context = self._browser.new_context(
            viewport={"width": viewport[0], "height": viewport[1]}, service_workers="block"
        )
        try:

            def route(route: Any) -> None:
                # Recorded by on_request, which sees every request, routed or not.
                if route.request.url.startswith(LOCAL_SCHEMES):
                    route.continue_()
                else:
                    route.abort("blockedbyclient")

            def on_console(message: Any) -> None:
                messages.append(f"{message.type}: {message.text}")
                if message.type == "error":
                    where = message.location or {}
                    errors.append(
                        f"{message.text} ({where.get('url', '?')}:{where.get('lineNumber', '?')})"
                    )

            def on_request(request: Any) -> None:
                requests.append(request.url)
                if not request.url.startswith(LOCAL_SCHEMES):
                    external.append(request.url)

            context.route("**/*", route)
            page = context.new_page()
            page.on("console", on_console)
            page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
            page.on("crash", lambda _page: errors.append("page crashed"))
            page.on("request", on_request)
            page.on(
                "requestfailed", lambda request: failed.append(f"{request.url} ({request.failure})")
            )
            page.on("websocket", lambda ws: external.append(ws.url))

            page.goto(url, wait_until="load", timeout=max(1.0, deadline - time.monotonic()) * 1000)
            if wait_for is not None:
                page.wait_for_function(
                    wait_for, timeout=max(1.0, deadline - time.monotonic()) * 1000
                )
            settled = _wait_until_stable(page, settle_ms / 1000, deadline)
            counts = {
                selector: int(page.evaluate("s => document.querySelectorAll(s).length", selector))
                for selector in selectors
            }
            values = {name: page.evaluate(expr) for name, expr in (evaluate or {}).items()}
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
            return Rendered(
                url=url,
                dom=page.evaluate("() => document.documentElement.outerHTML"),
                text=page.evaluate("() => document.body ? document.body.innerText : ''"),
                title=page.title(),
                console_errors=errors,
                console_messages=messages,
                requests=requests,
                external_requests=external,
                failed_requests=failed,
                counts=counts,
                values=values,
                settled=settled,
                elapsed_s=time.monotonic() - start,
            )
        finally:
            context.close()


def _wait_until_stable(page: Any, settle_s: float, deadline: float) -> bool:
    """Poll a cheap DOM fingerprint until it is unchanged for ``settle_s``."""
    probe = (
        "() => document.getElementsByTagName('*').length + ':' +"
        " document.documentElement.outerHTML.length"
    )
    last = page.evaluate(probe)
    stable_since = time.monotonic()
    while True:
        now = time.monotonic()
        if now - stable_since >= settle_s:
            return True
        if now >= deadline:
            return False
        page.wait_for_timeout(50)
        current = page.evaluate(probe)
        if current != last:
            last, stable_since = current, time.monotonic()


def render(
    path: str | os.PathLike[str],
    wait_ms: int = 10_000,
    *,
    executable_path: str | None = None,
    **options: Any,
) -> Rendered:
    """Render one page in a fresh headless Chromium; see ``Chromium.render`` for ``options``."""
    with Chromium(executable_path) as chrome:
        return chrome.render(path, wait_ms, **options)
