"""lmlib.data under hostile conditions: nothing lost, nothing silently wrong, every error clear.

Each test plays one misbehaviour against real downloads: processes fetching the same file at
once (and one killed mid-way), the loopback server of conftest.py refusing ranges forever,
trickling, or serving a damaged or wrong archive, and a cache that is damaged or read-only.
Every test is bounded in time (an alarm, and timeouts on each subprocess and download).
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import os
import random
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

import lmlib.data as data

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = random.Random(0).randbytes(3 << 19)  # 1.5 MiB, not text
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def bounded():
    """Fail any test of this file that runs past 45 s instead of hanging the suite."""
    def too_long(signum, frame):
        pytest.fail("the test ran past its 45 s bound")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(45)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def cache(isolated_data, monkeypatch):
    """No mirrors, an empty cache, and the default download deadline."""
    monkeypatch.delenv(data.DEADLINE_ENV, raising=False)
    return isolated_data


def _register(monkeypatch, url, content=PAYLOAD, member=None, name="tinyshakespeare", file="input.txt"):
    """Point a registry entry at `url`, with the sha256 and size of `content`."""
    ds = data.dataset(name)
    spec = dataclasses.replace(
        ds.file(file), url=url, sha256=hashlib.sha256(content).hexdigest(), size=len(content), member=member
    )
    monkeypatch.setitem(data.registry(), name, dataclasses.replace(ds, files={**ds.files, file: spec}))
    return spec


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and p.suffix in (".part", ".lock"))


# The child registers the served file as the test does, says "ready", waits for "go", fetches.
CHILD = r"""
import dataclasses, hashlib, sys
import lmlib.data as data
url, sha, size, locking = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if locking == "part files":
    data.fcntl = None  # what a platform without fcntl does
ds = data.dataset("tinyshakespeare")
spec = dataclasses.replace(ds.file(), url=url, sha256=sha, size=size)
data.registry()["tinyshakespeare"] = dataclasses.replace(ds, files={"input.txt": spec})
print("ready", flush=True)
sys.stdin.readline()
p = data.path("tinyshakespeare", deadline=30)
print(hashlib.sha256(p.read_bytes()).hexdigest(), flush=True)
"""


def _child(cache: Path, url: str, locking: str = "flock") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "LMLIB_DATA"} | {"LMLIB_CACHE": str(cache)}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, SHA, str(len(PAYLOAD)), locking],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    return proc


def _ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read()


@pytest.mark.parametrize("locking", ["flock", "part files"])
def test_processes_fetching_the_same_file_at_once_all_get_it_whole(cache, server, locking):
    """Three processes, two at once and one 0.4 s later, fetch the same 1.5 MiB from a slow server."""
    base, host = server
    host.routes["/input.txt"], host.modes["/input.txt"] = PAYLOAD, "slow"
    procs = [_child(cache, base + "/input.txt", locking) for _ in range(3)]
    try:
        for proc in procs:
            _ready(proc)
        for i, proc in enumerate(procs):
            if i == 2:
                time.sleep(0.4)
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.communicate(timeout=40) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert out.strip() == SHA
    target = cache / "tinyshakespeare" / "input.txt"
    assert data.sha256_of(target) == SHA and _leftovers(cache) == []
    if locking == "flock":  # the others waited for the first and used its file
        assert len(host.requests) == 1


def test_a_download_killed_midway_is_resumed_by_the_next_process(cache, server, monkeypatch):
    base, host = server
    host.routes["/input.txt"], host.modes["/input.txt"] = PAYLOAD, "slow"
    proc = _child(cache, base + "/input.txt")
    part = cache / "tinyshakespeare" / "input.txt.part"
    try:
        _ready(proc)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        while not (part.exists() and part.stat().st_size >= 1 << 18):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # holding the lock, mid-transfer
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.communicate()
    kept = part.stat().st_size
    host.modes["/input.txt"] = "ok"
    _register(monkeypatch, base + "/input.txt")
    p = data.path("tinyshakespeare", deadline=20)
    assert data.sha256_of(p) == SHA
    assert host.requests[-1][1] is not None and int(host.requests[-1][1][6:-1]) >= kept  # resumed, not restarted
    assert _leftovers(cache) == []


def test_a_server_refusing_every_range_gets_one_fresh_request_then_a_clear_error(cache, server, monkeypatch):
    base, host = server
    host.routes["/input.txt"], host.modes["/input.txt"] = PAYLOAD, "416"
    _register(monkeypatch, base + "/input.txt")
    part = cache / "tinyshakespeare" / "input.txt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"a partial file from another version")
    with pytest.raises(data.DownloadError, match="HTTP 416") as err:
        data.path("tinyshakespeare", deadline=20)
    assert base + "/input.txt" in str(err.value) and "whole file" in str(err.value)
    assert [r for _, r in host.requests] == ["bytes=35-", None]  # resume, restart from zero, stop
    # A server that refuses only the range: the restart from zero fetches the file.
    host.modes["/input.txt"] = "refuse-range"
    part.write_bytes(b"a partial file from another version")
    assert data.sha256_of(data.path("tinyshakespeare", deadline=20)) == SHA
    assert [r for _, r in host.requests[2:]] == ["bytes=35-", None] and _leftovers(cache) == []


def _zip(**members: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def test_a_zip_without_the_member_is_not_kept_and_a_fixed_server_is_used(cache, server, monkeypatch):
    base, host = server
    host.routes["/pack.zip"] = _zip(readme=b"about", other=b"x")
    _register(monkeypatch, base + "/pack.zip", member="input.txt")
    with pytest.raises(data.DataError, match="no member 'input.txt'") as err:
        data.path("tinyshakespeare", deadline=20)
    assert base + "/pack.zip" in str(err.value) and "downloads it again" in str(err.value)
    assert not any((cache / "_archives").iterdir()) and _leftovers(cache) == []
    host.routes["/pack.zip"] = _zip(readme=b"about", **{"input.txt": PAYLOAD})  # the server is fixed
    assert data.path("tinyshakespeare", deadline=20).read_bytes() == PAYLOAD


def test_a_zip_with_a_bad_crc_leaves_nothing_behind(cache, server, monkeypatch):
    base, host = server
    good = _zip(**{"input.txt": PAYLOAD})
    bad = bytearray(good)
    bad[len(good) // 2] ^= 0xFF  # inside the stored member: its CRC no longer matches
    host.routes["/pack.zip"] = bytes(bad)
    _register(monkeypatch, base + "/pack.zip", member="input.txt")
    with pytest.raises(data.DownloadError, match="is damaged.*CRC") as err:
        data.path("tinyshakespeare", deadline=20)
    assert base + "/pack.zip" in str(err.value) and "call again" in str(err.value)
    assert not (cache / "tinyshakespeare" / "input.txt.part").exists() and _leftovers(cache) == []
    assert not any((cache / "_archives").iterdir())
    host.routes["/pack.zip"] = good
    assert data.path("tinyshakespeare", deadline=20).read_bytes() == PAYLOAD


def _damaged_entry(cache: Path, server, monkeypatch) -> Path:
    base, host = server
    host.routes["/input.txt"] = PAYLOAD
    _register(monkeypatch, base + "/input.txt")
    target = data.path("tinyshakespeare", deadline=20)
    target.write_bytes(b"X" + PAYLOAD[1:])
    data._verified.clear()
    return target


def test_a_damaged_cache_entry_without_download_is_reported_and_kept(cache, server, monkeypatch):
    target = _damaged_entry(cache, server, monkeypatch)
    with pytest.raises(data.ChecksumError) as err:
        data.path("tinyshakespeare", download=False)
    message = str(err.value)
    assert str(target) in message and "damaged" in message and SHA in message and "download=True" in message
    assert "not in the cache" not in message
    assert target.read_bytes()[:1] == b"X"  # left as it was
    assert data.sha256_of(data.path("tinyshakespeare", deadline=20)) == SHA  # a download replaces it
    with pytest.raises(data.DataError, match="not in the mirrors.*download=True"):
        data.path("wikitext-2", download=False)


def _refuse_writes(monkeypatch, folder: Path) -> None:
    """Make every way of changing files in `folder` fail with EACCES, as a read-only folder does."""
    def refused(file):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))

    def inside(file) -> bool:
        return isinstance(file, (str, os.PathLike)) and str(file).startswith(str(folder))

    def guard(real, writes):
        def guarded(file, *args, **kwargs):
            if inside(file) and writes(*args, **kwargs):
                raise refused(file)
            return real(file, *args, **kwargs)
        return guarded

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT
    monkeypatch.setattr(os, "open", guard(os.open, lambda flags, *a, **k: flags & write_flags))
    monkeypatch.setattr(io, "open", guard(io.open, lambda mode="r", *a, **k: set(mode) & set("wax+")))
    monkeypatch.setattr("builtins.open", io.open)
    for name in ("unlink", "remove", "replace", "rename"):
        monkeypatch.setattr(os, name, guard(getattr(os, name), lambda *a, **k: True))


def test_a_damaged_entry_in_a_read_only_cache_says_what_to_do(cache, server, monkeypatch):
    target = _damaged_entry(cache, server, monkeypatch)
    folder = target.parent
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() == 0:  # root writes anywhere: refuse every change to the folder, as the kernel would
        _refuse_writes(monkeypatch, folder)
    try:
        with pytest.raises(data.DataError) as err:
            data.path("tinyshakespeare", deadline=20)
    finally:
        folder.chmod(stat.S_IRWXU)
    message = str(err.value)
    assert isinstance(err.value.__cause__, PermissionError)
    assert str(target) in message and f"cache folder {folder}" in message and "damaged" in message
    assert "LMLIB_CACHE" in message and "writable" in message
    assert target.read_bytes()[:1] == b"X"


def test_read_text_names_the_file_and_suggests_an_encoding(tmp_path, monkeypatch):
    text = "caf\u00e9 \u2013 na\u00efve\n".encode("cp1252")
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_bytes(text)
    monkeypatch.setenv("LMLIB_DATA", str(tmp_path))
    _register(monkeypatch, "http://127.0.0.1:9/input.txt", content=text)
    with pytest.raises(data.DataError, match="encoding=") as err:
        data.read_text("tinyshakespeare")
    assert str(tmp_path / "tinyshakespeare" / "input.txt") in str(err.value) and "utf-8" in str(err.value)
    assert data.read_text("tinyshakespeare", encoding="cp1252") == "caf\u00e9 \u2013 na\u00efve\n"


def test_a_trickling_download_stops_at_its_deadline_and_keeps_the_partial_file(cache, server, monkeypatch):
    base, host = server
    host.routes["/input.txt"], host.modes["/input.txt"] = PAYLOAD, "trickle"
    _register(monkeypatch, base + "/input.txt")
    part = cache / "tinyshakespeare" / "input.txt.part"
    began = time.monotonic()
    with pytest.raises(data.DownloadError, match="deadline of 1 s") as err:
        data.path("tinyshakespeare", deadline=1)
    assert time.monotonic() - began < 5
    assert "call again to resume" in str(err.value) and base + "/input.txt" in str(err.value)
    kept = part.stat().st_size
    assert kept > 0
    monkeypatch.setenv(data.DEADLINE_ENV, "0.5")  # the environment sets it where path() is called for you
    with pytest.raises(data.DownloadError, match=f"deadline of 0.5 s.*{data.DEADLINE_ENV}"):
        data.read_text("tinyshakespeare")
    monkeypatch.setenv(data.DEADLINE_ENV, "soon")
    with pytest.raises(ValueError, match=f"{data.DEADLINE_ENV}='soon'"):
        data.path("tinyshakespeare")
    monkeypatch.delenv(data.DEADLINE_ENV)
    host.modes["/input.txt"] = "ok"
    assert data.sha256_of(data.path("tinyshakespeare", deadline=20)) == SHA
    assert int(host.requests[-1][1][6:-1]) >= kept and _leftovers(cache) == []  # resumed


def test_a_mirror_url_serves_the_public_homes(cache, server, monkeypatch):
    base, handler = server
    spec = _register(monkeypatch, "https://example.org/data/input.txt?raw=1")
    handler.routes["/example.org/data/input.txt?raw=1"] = PAYLOAD
    monkeypatch.setenv(data.MIRROR_URL_ENV, base + "/")
    assert data.download_url(spec.url) == f"{base}/example.org/data/input.txt?raw=1"
    assert data.path("tinyshakespeare").read_bytes() == PAYLOAD
    assert [route for route, _ in handler.requests] == ["/example.org/data/input.txt?raw=1"]
    monkeypatch.setenv(data.MIRROR_URL_ENV, "mirror.example")
    with pytest.raises(data.DataError, match="LMLIB_MIRROR_URL='mirror.example' is not an http"):
        data.download_url(spec.url)
    monkeypatch.delenv(data.MIRROR_URL_ENV)
    assert data.download_url(spec.url) == spec.url
