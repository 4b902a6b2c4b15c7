"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``):
open a page, wait until a JavaScript condition holds, read values out of it, take a screenshot.

No WebDriver and no websocket library: Chromium reads NUL-terminated JSON commands on file
descriptor 3 and writes replies and events on 4. The dashboard's browser tests use it, and so
can a person who wants a screenshot of a running gateway::

    python -m quicgw.dashboard.browser https://127.0.0.1:8443/dashboard shot.png --spki BASE64

Blocking by design (one command at a time): call it from a thread when an event loop in the
same process must keep serving the page.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
# The flags the project's browser tests use (issue 7): headless, no sandbox (root in CI), no
# GPU, nothing fetched from the network behind our back.
BASE_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--no-first-run", "--no-default-browser-check",
              "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")


class BrowserError(RuntimeError):
    """Chromium is missing, died, or a DevTools command failed; the message says which."""


def find_chromium() -> str | None:
    for path in (os.environ.get("CHROMIUM"), *CHROMIUM_CANDIDATES, shutil.which("chromium")):
        if path and os.access(path, os.X_OK):
            return path
    return None


def spki_sha256_base64(certfile: str | Path) -> str:
    """What ``--ignore-certificate-errors-spki-list`` wants: base64(sha256(SubjectPublicKeyInfo
    DER)) of the server certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    cert = x509.load_pem_x509_certificate(Path(certfile).read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return base64.b64encode(digest.finalize()).decode()


def h3_flags(host: str, port: int) -> list[str]:
    """Flags that make Chromium talk HTTP/3 to ``host:port`` from the first request (no Alt-Svc
    round trip). Chromium tries ::1 first for ``localhost``; map it to 127.0.0.1, where the
    gateway listens by default."""
    flags = ["--enable-quic", f"--origin-to-force-quic-on={host}:{port}"]
    if host == "localhost":
        flags.append("--host-resolver-rules=MAP localhost 127.0.0.1")
    return flags


class Chromium:
    """One headless Chromium with a fresh profile, one page. Use as a context manager."""

    def __init__(self, *, flags: list[str] | tuple[str, ...] = (), width: int = 1400,
                 height: int = 1000, executable: str | None = None,
                 timeout_s: float = 30.0) -> None:
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise BrowserError("Chromium not found (/usr/bin/chromium): install Debian's "
                               "chromium (make sysdeps, or apt-get install chromium)")
        self.flags = list(flags)
        self.width, self.height = width, height
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None
        self._profile: str | None = None
        self._next_id = 0
        self._buffer = b""
        self._session: str | None = None
        self._events: list[dict] = []
        self._stderr: list[bytes] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        self._profile = tempfile.mkdtemp(prefix="quicgw-chromium-")
        # fds 3 and 4 in the child: Chromium reads commands on 3, writes replies on 4.
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        args = [self.executable, *BASE_FLAGS, f"--user-data-dir={self._profile}",
                "--remote-debugging-pipe", f"--window-size={self.width},{self.height}",
                *self.flags, "about:blank"]

        def wire_fds() -> None:  # in the child, before exec (and before close_fds)
            # Via descriptors >= 10 first, so neither dup2 clobbers the other pipe's end.
            high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        try:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         preexec_fn=wire_fds, pass_fds=(3, 4))
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        # Drain stderr in the background so a chatty Chromium never blocks on a full pipe;
        # its last lines go into error messages.
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        target = next((t for t in self.send("Target.getTargets")["targetInfos"]
                       if t["type"] == "page"), None)
        if target is None:
            target_id = self.send("Target.createTarget", url="about:blank")["targetId"]
        else:
            target_id = target["targetId"]
        self._session = self.send("Target.attachToTarget", targetId=target_id,
                                  flatten=True)["sessionId"]
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)

    def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)
            del self._stderr[:-40]

    def stderr_tail(self) -> str:
        return b"".join(self._stderr[-15:]).decode(errors="replace")

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self._write({"id": self._new_id(), "method": "Browser.close"})
                    self.proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            self.proc = None
        for fd in ("_to_child", "_from_child"):
            try:
                os.close(getattr(self, fd))
            except (AttributeError, OSError):
                pass
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    # -- the protocol ----------------------------------------------------------------------------
    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _write(self, message: dict) -> None:
        os.write(self._to_child, json.dumps(message).encode() + b"\0")

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer from Chromium within {self.timeout_s:g} s")
            ready, _, _ = select.select([self._from_child], [], [], min(left, 0.5))
            if not ready:
                if self.proc is not None and self.proc.poll() is not None:
                    raise BrowserError(f"Chromium exited with status {self.proc.returncode}:\n"
                                       f"{self.stderr_tail()}")
                continue
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed the DevTools pipe:\n{self.stderr_tail()}")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def send(self, method: str, timeout_s: float | None = None, **params: Any) -> dict:
        """Send one command (to the page once attached) and return its result."""
        message: dict[str, Any] = {"id": self._new_id(), "method": method, "params": params}
        if self._session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        self._write(message)
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise BrowserError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)
                del self._events[:-500]

    # -- what tests do ---------------------------------------------------------------------------
    def navigate(self, url: str) -> None:
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"cannot load {url}: {result['errorText']}")

    def evaluate(self, expression: str, timeout_s: float | None = None) -> Any:
        """The value of a JavaScript expression (awaited if it is a promise), as JSON."""
        result = self.send("Runtime.evaluate", timeout_s=timeout_s, expression=expression,
                           returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error in {expression[:80]!r}: {text}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30.0, interval_s: float = 0.2) -> Any:
        """Poll until the expression is truthy; its value. A timeout says what it last was."""
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except BrowserError as e:  # e.g. evaluated while the page navigates
                value = f"<{e}>"
            if value and not (isinstance(value, str) and value.startswith("<")):
                return value
            time.sleep(interval_s)
        raise BrowserError(f"timed out after {timeout_s:g} s waiting for {expression!r} "
                           f"(last value: {value!r})")

    def screenshot(self, path: str | Path, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": max(self.width, size["width"]),
                              "height": size["height"], "scale": 1}
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", **params)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quicgw.dashboard.browser",
        description="Screenshot a page (e.g. a gateway's /dashboard) in headless Chromium.")
    parser.add_argument("url")
    parser.add_argument("out", help="PNG file to write")
    parser.add_argument("--spki", help="base64 SHA-256 of the server certificate's SPKI to "
                                       "trust (see --cert), for a self-signed gateway")
    parser.add_argument("--cert", help="the server certificate (PEM): trust its key")
    parser.add_argument("--h3", action="store_true", help="force QUIC (HTTP/3) to the origin")
    parser.add_argument("--wait", default="document.readyState === 'complete'",
                        help="JavaScript condition to wait for before the screenshot")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args(argv)
    flags = []
    spki = args.spki or (spki_sha256_base64(args.cert) if args.cert else None)
    if spki:
        flags.append(f"--ignore-certificate-errors-spki-list={spki}")
    if args.h3:
        from urllib.parse import urlsplit

        origin = urlsplit(args.url)
        flags += h3_flags(origin.hostname, origin.port)
    try:
        with Chromium(flags=flags, width=args.width, height=args.height) as browser:
            browser.navigate(args.url)
            browser.wait_for(args.wait)
            print(browser.screenshot(args.out))
    except BrowserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
