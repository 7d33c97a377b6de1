"""A real headless Chromium (Debian ``chromium``) driven over the DevTools protocol.

Just enough of the protocol to load a page with HTTP Basic credentials at a given window
size, evaluate JavaScript in it (for assertions on the rendered DOM and layout) and take a
full-page screenshot. Chromium runs as its own process group with a throw-away profile and is
stopped by PID; it reaches only the loopback URL the test gives it.

    async with Browser(tmp_path / "chromium") as browser:
        await browser.open(url, width=1400, height=900, basic=("fleet", token))
        assert await browser.evaluate("document.title") == "layerswarm fleet"
        await browser.screenshot(tmp_path / "page.png")
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from testbed.procs import Proc, ProcError, require_binary


class BrowserError(RuntimeError):
    """Chromium did not start, or a DevTools call failed."""


class Browser:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.profile = workdir / "profile"
        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = Proc(
            [
                require_binary("chromium"),
                "--headless=new",
                # The test runs as root in a container: Chromium's sandbox needs user
                # namespaces it may not get, and it only ever opens a loopback test page.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            workdir / "logs",
            name="chromium",
        )
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []

    async def __aenter__(self) -> Browser:
        self.proc.start()
        try:
            port = await self._devtools_port(timeout=30)
            self._session = aiohttp.ClientSession()
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t.get("type") == "page")
            self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
            for domain in ("Page", "Network", "Runtime"):
                await self.call(f"{domain}.enable")
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        self.proc.stop()

    async def _devtools_port(self, timeout: float) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.running:
                raise ProcError(f"chromium exited early\n{self.proc.log_tail()}")
            if marker.exists():
                first = marker.read_text().splitlines()[:1]
                if first and first[0].isdigit():
                    return int(first[0])
            await asyncio.sleep(0.1)
        raise ProcError(f"chromium opened no DevTools port in {timeout}s\n{self.proc.log_tail()}")

    async def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        assert self._ws is not None
        msg_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        async with asyncio.timeout(timeout):
            while True:
                msg = json.loads(await self._ws.receive_str())
                if msg.get("id") == msg_id:
                    if "error" in msg:
                        raise BrowserError(f"{method}: {msg['error']}")
                    result: dict[str, Any] = msg.get("result", {})
                    return result
                if "method" in msg:
                    self._events.append(msg)

    async def _wait_event(self, name: str, timeout: float = 30.0) -> None:
        assert self._ws is not None
        async with asyncio.timeout(timeout):
            while True:
                for i, ev in enumerate(self._events):
                    if ev.get("method") == name:
                        del self._events[: i + 1]
                        return
                self._events.clear()
                msg = json.loads(await self._ws.receive_str())
                if "method" in msg:
                    self._events.append(msg)

    async def open(
        self, url: str, *, width: int, height: int, basic: tuple[str, str] | None = None
    ) -> None:
        """Load ``url`` in a window this size (a phone's when narrow) and wait for it."""
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=width < 600,
        )
        if basic is not None:
            token = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
            await self.call(
                "Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"}
            )
        self._events.clear()
        await self.call("Page.navigate", url=url)
        await self._wait_event("Page.loadEventFired")

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        """The whole page, not just the window, as PNG."""
        metrics = await self.call("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = await self.call(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
