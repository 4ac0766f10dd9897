"""Shared test helpers: real processes on loopback, raw-socket HTTP, metrics parsing.

Everything here starts real components (the gateway's own CLI, an echo upstream) on port 0
and tears them down; nothing is assumed to be running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PY = sys.executable
# The engine start_gateway passes with --engine when the caller names none; set per test
# by conftest's ``engine`` fixture (None: the CLI's default).
DEFAULT_ENGINE: str | None = None
LISTEN_RE = re.compile(r"listening listener=(\S+) address=(\S+):(\d+)")


class Proc:
    """A child process whose output is collected by a thread (so pipes never fill)."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.popen = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float = 20.0, start: int = 0
    ) -> re.Match[str]:
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._thread.is_alive()):
                    raise AssertionError(
                        f"{pattern!r} not seen in output of {self.args}:\n" + self.output()
                    )
                self._cond.wait(min(left, 0.1))

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines[-200:])

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


@dataclass
class Upstream:
    proc: Proc
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_upstream(name: str = "up") -> Upstream:
    proc = Proc([PY, "-m", "gateway.demo_upstream", "--port", "0", "--name", name])
    m = proc.wait_for(r"listening 127\.0\.0\.1:(\d+)")
    return Upstream(proc, int(m.group(1)))


@dataclass
class Gateway:
    proc: Proc
    config_path: Path
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)

    def port(self, listener: str | None = None) -> int:
        if listener is None:
            listener = next(n for n in self.addresses if n != "admin")
        return self.addresses[listener][1]

    @property
    def admin(self) -> str:
        host, port = self.addresses["admin"]
        return f"http://{host}:{port}"

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        with urllib.request.urlopen(self.admin + "/metrics", timeout=10) as r:
            return parse_metrics(r.read().decode())

    def stop(self) -> int:
        return self.proc.stop()


def start_gateway(
    config: dict[str, Any] | Path,
    tmp: Path,
    *extra: str,
    engine: str | None = None,
    env: dict[str, str] | None = None,
) -> Gateway:
    if isinstance(config, Path):
        path = config
    else:
        path = tmp / "config.json"
        path.write_text(json.dumps(config, indent=2))
    args = [
        PY, "-m", "gateway", "run", "--config", str(path),
        "--admin-listen", "127.0.0.1:0", "--drain-delay", "0", "--listen", "127.0.0.1:0",
        *extra,
    ]  # fmt: skip
    engine = engine or DEFAULT_ENGINE
    if engine:
        args += ["--engine", engine]
    proc = Proc(args, env=env)
    gw = Gateway(proc, path)
    proc.wait_for(r"serving config sha256=")
    for line in proc.lines:
        m = LISTEN_RE.search(line)
        if m:
            gw.addresses[m.group(1)] = (m.group(2), int(m.group(3)))
    return gw


@contextmanager
def running_gateway(
    config: dict[str, Any] | Path, tmp: Path, *extra: str, **kw: Any
) -> Iterator[Gateway]:
    gw = start_gateway(config, tmp, *extra, **kw)
    try:
        yield gw
    finally:
        gw.stop()


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def metric_sum(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= set(ls))


# -- raw HTTP ----------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def read_response(sock: socket.socket, buf: bytearray, head_request: bool = False) -> RawResponse:
    """Read one HTTP/1.1 response from sock (Content-Length, chunked or close framing)."""

    def fill() -> bool:
        data = sock.recv(65536)
        if not data:
            return False
        buf.extend(data)
        return True

    while b"\r\n\r\n" not in buf:
        if not fill():
            raise ConnectionError(f"connection closed before a response (got {bytes(buf)[:200]!r})")
    head, _, _rest = bytes(buf).partition(b"\r\n\r\n")
    del buf[: len(head) + 4]
    lines = head.decode("latin-1").split("\r\n")
    _version, status, *reason = lines[0].split(" ", 2)
    headers = [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:])]
    resp = RawResponse(int(status), reason[0] if reason else "", headers, b"")
    if head_request or resp.status in (204, 304) or 100 <= resp.status < 200:
        return resp
    te = (resp.header("Transfer-Encoding") or "").lower()
    cl = resp.header("Content-Length")
    if "chunked" in te:
        body = bytearray()
        while True:
            while b"\r\n" not in buf:
                if not fill():
                    raise ConnectionError("closed inside chunked body")
            size_line, _, _ = bytes(buf).partition(b"\r\n")
            del buf[: len(size_line) + 2]
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                if not fill():
                    raise ConnectionError("closed inside chunk")
            body += buf[:size]
            del buf[: size + 2]
            if size == 0:
                break
        resp.body = bytes(body)
    elif cl is not None:
        n = int(cl)
        while len(buf) < n:
            if not fill():
                raise ConnectionError("closed inside body")
        resp.body = bytes(buf[:n])
        del buf[:n]
    else:
        while fill():
            pass
        resp.body = bytes(buf)
        buf.clear()
    return resp


def raw_request(port: int, data: bytes, count: int = 1, timeout: float = 10.0) -> list[RawResponse]:
    """Send raw bytes, read ``count`` responses (fewer if the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = bytearray()
        out = []
        for _ in range(count):
            try:
                out.append(read_response(s, buf))
            except (ConnectionError, TimeoutError, OSError):
                break
        return out


def get(port: int, host: str, path: str = "/", headers: str = "") -> RawResponse:
    req = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"
    responses = raw_request(port, req.encode("latin-1"))
    assert responses, f"no response for Host {host!r}"
    return responses[0]


def wait_until(predicate: Any, timeout: float = 15.0, interval: float = 0.02) -> float:
    """Poll until predicate() is true; returns the seconds it took. Fails after timeout."""
    t0 = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


# -- benchmark smoke runs ------------------------------------------------------------------


def run_bench_module(module: str, args: list[str], timeout: float) -> tuple[int, str]:
    """Run ``python -m <module> <args>`` from the repo in its own process group, so that
    whatever happens everything it started can be stopped (SIGTERM makes the bench tools
    stop their children before exiting). Returns the exit code and the combined output."""
    proc = subprocess.Popen(
        [PY, "-m", module, *args],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        process_group=0,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return proc.returncode, output


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def until_closed(sock: socket.socket) -> bytes:
    """Whatever the server sends (a TLS alert, say) until it closes or resets."""
    got = b""
    try:
        while data := sock.recv(65536):
            got += data
    except ConnectionResetError:
        pass
    return got


def tls_exchange(
    port: int, ctx: ssl.SSLContext, sni: str, prefix: bytes, request: bytes, split: bool = False
) -> bytes:
    """A TLS client over memory BIOs, so that the bytes on the wire are chosen exactly:
    ``prefix`` (a PROXY header) and the ClientHello go out in one send, as a balancer that
    prepends its header to the client's first segment sends them, and the request goes
    out with the client's last handshake flight (TLS 1.3 clients do that). ``split``: the
    prefix alone first, then the ClientHello in a segment of its own. Returns every byte of
    the answer, up to the server's close."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if split:
            sock.sendall(prefix)
            time.sleep(0.05)
        first = not split
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                flight = outgoing.read()
                if flight:
                    sock.sendall((prefix if first else b"") + flight)
                    first = False
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                incoming.write(data)
        obj.write(request)
        sock.sendall(outgoing.read())
        answer = b""
        while True:
            try:
                got = obj.read(65536)
                if not got:
                    return answer  # the server's close_notify
                answer += got
            except ssl.SSLWantReadError:
                data = sock.recv(65536)
                if not data:
                    return answer
                incoming.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return answer
