"""Shared fixtures: the course data mirror and a loopback HTTP server that can misbehave."""
from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import lmlib.data

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("LMLIB_DATA", "").split(os.pathsep)[0] or Path(__file__).parents[2] / "shared" / "data")


@pytest.fixture
def mirror() -> Path:
    """The course's shared data mirror (CI always has it)."""
    if not (MIRROR / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip(f"no course data mirror at {MIRROR}")
    return MIRROR


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """No mirrors and an empty cache: every `path()` must download."""
    monkeypatch.delenv("LMLIB_DATA", raising=False)
    monkeypatch.setenv("LMLIB_CACHE", str(tmp_path / "cache"))
    lmlib.data._verified.clear()
    return tmp_path / "cache"


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves `routes` (path -> bytes). Modes per path: 'ok', 'corrupt', 'truncate', 'missing';
    'slow' (64 KiB every 50 ms), 'trickle' (one byte every 20 ms), '416' (refuses every request)
    and 'refuse-range' (416 to every range request).

    Honours `Range: bytes=N-` with 206, like real static hosts, so resumption can be tested.
    """

    routes: dict[str, bytes] = {}
    modes: dict[str, str] = {}
    requests: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802 (http.server API)
        self.requests.append((self.path, self.headers.get("Range")))
        body = self.routes.get(self.path)
        mode = self.modes.get(self.path, "ok")
        if body is None or mode == "missing":
            self.send_error(404)
            return
        if mode == "416" or (mode == "refuse-range" and self.headers.get("Range")):
            self.send_error(416)
            return
        if mode == "corrupt":
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if mode == "truncate":
            self.wfile.write(payload[: len(payload) // 3])
            self.wfile.flush()
            self.close_connection = True
            self.modes[self.path] = "ok"  # the next attempt succeeds
            return
        step, pause = {"slow": (1 << 16, 0.05), "trickle": (1, 0.02)}.get(mode, (len(payload) or 1, 0))
        try:
            for i in range(0, len(payload), step):
                self.wfile.write(payload[i : i + step])
                self.wfile.flush()
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A threaded HTTP server on 127.0.0.1 with a fresh route table; yields (base_url, handler)."""
    handler = type("Handler", (_Handler,), {"routes": {}, "modes": {}, "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The website built once per test session, strictly (-W), at the current scale preset.

    ``LMLIB_SITE=<folder>/_build/html`` checks a site built before instead (quick reruns of the
    site tests while working on them); ``make test`` always builds.
    """
    if os.environ.get("LMLIB_SITE"):
        return Path(os.environ["LMLIB_SITE"])
    out = tmp_path_factory.mktemp("book")
    jb = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or "jupyter-book"
    env = {**os.environ, "LMLIB_SCALE": os.environ.get("LMLIB_SCALE", "smoke")}
    proc = subprocess.run(
        [jb, "build", str(ROOT), "--path-output", str(out), "-W", "--keep-going"],
        capture_output=True, text=True, env=env, timeout=1800,
    )
    log = proc.stdout + proc.stderr
    (out / "build.log").write_text(log)
    noise = "[IPKernelApp]"  # the kernel's own chatter, not a build problem
    problems = [l for l in log.splitlines() if ("WARNING" in l or "ERROR" in l or "Error" in l) and noise not in l]
    assert proc.returncode == 0, f"book build failed (full log: {out / 'build.log'}):\n" + "\n".join(problems)[-5000:]
    return out / "_build" / "html"
