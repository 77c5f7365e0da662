"""The course's data sets: a registry, checked downloads, and the loaders the chapters share.

Derived in chapter 1 ("What a language model is") and used by every chapter after it.

``path(name, file)`` finds a file in this order:

1. the mirror folders listed in ``LMLIB_DATA`` (``os.pathsep``-separated), laid out as
   ``<mirror>/<name>/<file>`` (the course's CI points it at its shared copy);
2. in a clone of the course, its ``models/`` folder (:func:`release_dir`), where the course's
   own released models are committed (``models/<name>/<file>``);
3. the cache (``LMLIB_CACHE``; else ``data/cache`` inside a clone of the course, else
   ``~/.cache/lmlib``);
4. a download from the file's public home (or, with ``LMLIB_MIRROR_URL`` set, from a web server
   that mirrors the public homes: :func:`download_url`), with a progress bar, resumed if it was
   interrupted, checked against the registry's sha256, then moved into the cache atomically.

Downloads are safe to run side by side: one process at a time fetches a given file (it holds
``<file>.lock`` beside the cache entry), and the others wait and then use its result. Each
download has an overall deadline (``deadline=``, else ``LMLIB_DOWNLOAD_DEADLINE`` seconds, else an
hour); one that runs out keeps its partial file, so the next call resumes it. A damaged cache
entry is fetched again, or with ``download=False`` reported and left alone.

The registry (``lmlib/datasets.toml``) records each file's URL, size, sha256 and the data set's
licence and citation; :func:`credit` formats the credit line that a notebook shows.
"""
from __future__ import annotations

import difflib
import gzip
import hashlib
import http.client
import lzma
import os
import shutil
import tarfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import torch

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so each process downloads into its own partial file
    fcntl = None

REGISTRY_FILE = Path(__file__).with_name("datasets.toml")
_CHUNK = 1 << 16

T = TypeVar("T")


class DataError(RuntimeError):
    """A data set could not be found, fetched or trusted; the message says what to do."""


class ChecksumError(DataError):
    """A file's sha256 differs from the registry's."""


class DownloadError(DataError):
    """A download failed (no network, HTTP error, interrupted transfer)."""


@dataclass(frozen=True)
class DataFile:
    dataset: str
    name: str
    url: str
    sha256: str
    size: int | None = None
    member: str | None = None  # path inside the archive at `url`, if the file is packed

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.name}"


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    licence: str
    citation: str
    homepage: str
    default: str
    files: dict[str, DataFile] = field(default_factory=dict)

    def file(self, name: str | None = None) -> DataFile:
        name = name or self.default
        if name not in self.files:
            raise ValueError(
                f"Data set {self.name!r} has no file {name!r}; its files are: {', '.join(self.files)}."
            )
        return self.files[name]


@lru_cache(maxsize=1)
def registry() -> dict[str, Dataset]:
    """All registered data sets, by name."""
    with open(REGISTRY_FILE, "rb") as f:
        raw = tomllib.load(f)
    out = {}
    for name, entry in raw.items():
        files = {
            fname: DataFile(name, fname, spec["url"], spec["sha256"], spec.get("size"), spec.get("member"))
            for fname, spec in entry["files"].items()
        }
        fields = {k: entry[k] for k in ("title", "licence", "citation", "homepage", "default")}
        out[name] = Dataset(name=name, files=files, **fields)
    return out


def dataset(name: str) -> Dataset:
    """The registry entry for ``name``; an unknown name gets the closest known names."""
    known = registry()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"Unknown data set {name!r}.{hint} Known data sets: {', '.join(sorted(known))}.")
    return known[name]


def credit(name: str) -> str:
    """A one-line Markdown credit for a data set: title, citation, licence, home page."""
    ds = dataset(name)
    return f"**{ds.title}**. {ds.citation}. Licence: {ds.licence}. <{ds.homepage}>"


def mirrors() -> list[Path]:
    """The mirror folders named by ``LMLIB_DATA`` (missing folders are an error, not ignored)."""
    value = os.environ.get("LMLIB_DATA", "")
    out = []
    for part in filter(None, value.split(os.pathsep)):
        folder = Path(part).expanduser()
        if not folder.is_dir():
            raise DataError(
                f"LMLIB_DATA names {folder}, which is not a folder. Fix or unset LMLIB_DATA "
                "(it lists folders that hold <data set>/<file>)."
            )
        out.append(folder)
    return out


def release_dir() -> Path:
    """The clone's ``models/`` folder, where the course's own released models live (``<name>/<file>``).

    Outside a clone (an installed package) it does not exist, and released files are downloaded
    from the course repository like any data set.
    """
    return Path(__file__).resolve().parents[1] / "models"


def cache_dir() -> Path:
    """Where downloads go: ``LMLIB_CACHE``, else ``data/cache`` in a course clone, else ``~/.cache/lmlib``."""
    if os.environ.get("LMLIB_CACHE"):
        return Path(os.environ["LMLIB_CACHE"]).expanduser()
    clone = Path(__file__).resolve().parents[1]
    if (clone / "_toc.yml").exists() and (clone / "data").is_dir():
        return clone / "data" / "cache"
    return Path.home() / ".cache" / "lmlib"


def sha256_of(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_verified: dict[tuple[str, int, int], str] = {}


def cached_sha256(file: Path) -> str:
    """sha256 of a file, computed once per process for an unchanged file (path, size, mtime).

    Every check of a file against a known hash goes through it (the registry's files, the Hugging
    Face cache's weights), so a file read many times in one process is hashed once.
    """
    st = file.stat()
    key = (str(file.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        _verified[key] = sha256_of(file)
    return _verified[key]


def path(name: str, file: str | None = None, *, download: bool = True, deadline: float | None = None) -> Path:
    """The local path of a registered file, fetching and checking it if needed (see module doc).

    With ``download=False`` a file that is in no mirror and not (intact) in the cache is an error
    instead of a download. ``deadline`` bounds a download's total time in seconds (default
    ``LMLIB_DOWNLOAD_DEADLINE``, else an hour).
    """
    spec = dataset(name).file(file)
    for mirror in mirrors():
        candidate = mirror / name / spec.name
        if candidate.is_file():
            actual = cached_sha256(candidate)
            if actual != spec.sha256:
                raise ChecksumError(
                    f"{candidate} (mirror copy of {spec.key}) has sha256 {actual}, expected {spec.sha256}. "
                    "The mirror is damaged or holds another version: replace the file."
                )
            return candidate
    released = release_dir() / name / spec.name
    if released.is_file():
        actual = cached_sha256(released)
        if actual != spec.sha256:
            raise ChecksumError(
                f"{released} (the course's released {spec.key}) has sha256 {actual}, but the registry "
                f"lmlib/datasets.toml says {spec.sha256}. After retraining a release, update its entry "
                "(lmlib.recipes.registry_entry prints it); otherwise restore the file with git."
            )
        return released
    target = cache_dir() / name / spec.name
    if target.is_file():
        actual = cached_sha256(target)
        if actual == spec.sha256:
            return target
        if not download:
            raise ChecksumError(
                f"The cache entry {target} for {spec.key} is damaged: sha256 {actual}, expected "
                f"{spec.sha256}. It is left as it is. Call again with download=True to replace it with a "
                "fresh download, or put a good copy in its place (or delete it)."
            )
    elif not download:
        raise DataError(
            f"{spec.key} is not in the mirrors {mirrors()} nor in the cache {target.parent}, and "
            f"download=False. Call with download=True, or: {_by_hand(spec, target)}"
        )
    return fetch(spec, target, deadline=deadline)


MIRROR_URL_ENV = "LMLIB_MIRROR_URL"


def download_url(url: str) -> str:
    """Where the registry's ``url`` is fetched from: the URL itself, or, with ``LMLIB_MIRROR_URL``
    set (a web server that mirrors the public homes, for example inside a network without internet
    access), that server's copy at ``<LMLIB_MIRROR_URL>/<host>/<path>``. Checked by the same sha256."""
    base = os.environ.get(MIRROR_URL_ENV, "").strip().rstrip("/")
    if not base:
        return url
    if not base.startswith(("http://", "https://")):
        raise DataError(f"{MIRROR_URL_ENV}={base!r} is not an http(s) URL: set it to a server's base URL "
                        "(for example http://mirror.example:8000) or unset it.")
    parts = urllib.parse.urlsplit(url)
    return f"{base}/{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")


DEADLINE_ENV = "LMLIB_DOWNLOAD_DEADLINE"
DEFAULT_DEADLINE = 3600.0  # seconds; the largest registered file takes seconds on a working line


@dataclass(frozen=True)
class _Deadline:
    seconds: float
    at: float  # time.monotonic() when it passes

    @classmethod
    def start(cls, seconds: float | None) -> _Deadline:
        if seconds is None:
            raw = os.environ.get(DEADLINE_ENV) or str(DEFAULT_DEADLINE)
            try:
                seconds = float(raw)
            except ValueError:
                raise ValueError(f"{DEADLINE_ENV}={raw!r} is not a number of seconds; fix or unset it.") from None
        if not seconds > 0:
            raise ValueError(f"A download deadline must be a positive number of seconds, got {seconds!r}.")
        return cls(seconds, time.monotonic() + seconds)

    def left(self) -> float:
        return self.at - time.monotonic()


def fetch(spec: DataFile, target: Path, *, deadline: float | None = None) -> Path:
    """Download ``spec`` into ``target`` (extracting its archive member if it has one), checked.

    One process at a time fetches a given file (a lock file beside it); a process that waited
    finds the finished file and uses it. ``deadline`` as in :func:`path`.
    """
    clock = _Deadline.start(deadline)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(target, clock, spec) as part:
            if target.is_file() and cached_sha256(target) == spec.sha256:
                return target  # another process fetched it while this one waited
            if spec.member is None:
                _download(download_url(spec.url), part, spec, target, clock, size=spec.size)
                _check_and_place(part, spec, target)
            else:
                _fetch_member(spec, target, part, clock)
    except OSError as err:  # network errors are DownloadErrors by now: this is the local disk
        raise _cannot_write(spec, target, err) from err
    return target


def _cannot_write(spec: DataFile, target: Path, err: OSError) -> DataError:
    damaged = ""
    try:
        if target.is_file() and (actual := sha256_of(target)) != spec.sha256:
            damaged = f"The cache entry {target} is damaged (sha256 {actual}, expected {spec.sha256}) and "
    except OSError:
        pass
    what = f"{damaged}{spec.key} cannot be fetched again" if damaged else f"Fetching {spec.key} failed"
    good_copy = f", or put a good copy at {target}" if damaged else ""
    return DataError(
        f"{what}: writing {err.filename or target} in the cache folder {target.parent} failed "
        f"({err.strerror or err}). Make that folder writable (or free space on its disk), or set "
        f"LMLIB_CACHE to a writable folder, or LMLIB_DATA to a folder that holds {spec.key}{good_copy}."
    )


@contextmanager
def _exclusive(file: Path, clock: _Deadline, spec: DataFile) -> Iterator[Path]:
    """Hold ``file``'s lock (``<file>.lock`` beside it) and yield the partial file to download into.

    The holder removes the lock file before it lets go; a process that then gets the lock on the
    removed file sees that the path no longer names it and locks afresh. Without ``fcntl``
    (Windows) each process downloads into its own partial file, taking over the shared one.
    """
    part = file.with_name(file.name + ".part")
    if fcntl is None:
        own = file.with_name(f"{file.name}.part-{os.getpid()}")
        with suppress(OSError):
            os.replace(part, own)  # resume the shared partial file, if there is one
        try:
            yield own
        finally:
            if own.exists():
                with suppress(OSError):
                    os.replace(own, part)  # hand it back for the next call to resume
        return
    lock = file.with_name(file.name + ".lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _wait_for_lock(fd, lock, clock, spec)
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                current = False
        except BaseException:
            os.close(fd)
            raise
        if current:
            break
        os.close(fd)
    try:
        yield part
    finally:
        with suppress(OSError):
            lock.unlink()  # still held here, see above
        os.close(fd)


def _wait_for_lock(fd: int, lock: Path, clock: _Deadline, spec: DataFile) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as err:
            raise DataError(
                f"Could not lock {lock} ({err.strerror}): the cache's file system does not support "
                "locks. Set LMLIB_CACHE to a folder on a local disk."
            ) from err
        if clock.left() <= 0:
            raise DownloadError(
                f"Another process has held {lock} (it is fetching {spec.key}) for longer than the "
                f"download deadline of {clock.seconds:g} s. Let it finish, or end it and call again "
                f"(its partial file is resumed); {DEADLINE_ENV} sets the deadline."
            )
        time.sleep(0.05)


def _fetch_member(spec: DataFile, target: Path, extracted: Path, clock: _Deadline) -> None:
    """Fetch the archive that holds ``spec`` (kept in ``_archives`` for its other members) and extract it."""
    archive_dir = cache_dir() / "_archives"
    archive_dir.mkdir(parents=True, exist_ok=True)
    archive = archive_dir / _archive_name(spec.url)
    with _exclusive(archive, clock, spec) as part:
        if not archive.is_file():
            _download(download_url(spec.url), part, spec, target, clock, size=None)
            os.replace(part, archive)
        try:
            try:
                _extract_member(archive, spec.member, extracted)
            except BaseException:
                extracted.unlink(missing_ok=True)  # never leave a half-extracted file behind
                raise
        except DataError as err:  # the member is missing: not the archive the registry describes
            archive.unlink(missing_ok=True)
            raise DataError(
                f"The archive {spec.url} for {spec.key}: {err} It was deleted from the cache "
                f"{archive_dir}, so the next call downloads it again; if this repeats, the archive has "
                f"changed at its source. {_by_hand(spec, target)}"
            ) from None
        except _DAMAGED_ARCHIVE as err:
            archive.unlink(missing_ok=True)
            raise DownloadError(
                f"The archive {spec.url} for {spec.key} is damaged ({err}); it was deleted from the "
                f"cache {archive_dir}: call again to download it afresh."
            ) from err
        try:
            _check_and_place(extracted, spec, target)
        except ChecksumError:
            archive.unlink(missing_ok=True)  # the archive holds another version: do not reuse it
            raise


def _archive_name(url: str) -> str:
    base = url.rstrip("/").rsplit("/", 1)[-1]
    return base.replace("+", "_") or hashlib.sha256(url.encode()).hexdigest()[:16]


def _download(url: str, part: Path, spec: DataFile, target: Path, clock: _Deadline, size: int | None) -> None:
    """Stream ``url`` into ``part``, resuming a partial download where the server allows it.

    A server that refuses the resumption (HTTP 416, or a range that starts elsewhere) gets one
    request for the whole file; ``size``, where known, drops a partial file longer than the file.
    """
    from tqdm.auto import tqdm

    if size is not None and part.exists() and part.stat().st_size > size:
        part.unlink()  # longer than the file itself: no prefix of it
    for attempt in range(2):
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "lmlib (course data downloader)"}
        if have:
            headers["Range"] = f"bytes={have}-"
        if clock.left() <= 0:
            raise _too_slow(spec, url, part, clock, None)
        try:
            response = urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=min(60.0, clock.left())
            )
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # our partial file is no prefix of theirs: start over
                part.unlink(missing_ok=True)
                continue
            what = " (to a request for the whole file: the server misbehaves, try again later)" if err.code == 416 else ""
            raise DownloadError(
                f"Downloading {spec.key} from {url} failed: HTTP {err.code} {err.reason}{what}. "
                f"{_by_hand(spec, target)}"
            ) from err
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DownloadError(f"Could not reach {url} for {spec.key} ({reason}). {_by_hand(spec, target)}") from err
        with response:
            resumed = have > 0 and response.status == 206
            if resumed and not response.headers.get("Content-Range", f"bytes {have}-").startswith(f"bytes {have}-"):
                part.unlink(missing_ok=True)  # the server sent another range: start over
                continue
            length = response.headers.get("Content-Length")
            total = (have if resumed else 0) + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=have if resumed else 0, unit="B", unit_scale=True, desc=spec.key, leave=False
            ) as bar:
                while True:
                    try:
                        chunk = response.read1(_CHUNK)
                    except (http.client.HTTPException, OSError) as err:
                        out.close()
                        raise DownloadError(
                            f"The download of {spec.key} from {url} was interrupted ({err!r}) after "
                            f"{part.stat().st_size} bytes. The partial file {part} is kept: call again to resume."
                        ) from err
                    if not chunk:
                        break
                    out.write(chunk)
                    bar.update(len(chunk))
                    if clock.left() <= 0:
                        out.close()
                        raise _too_slow(spec, url, part, clock, total)
        got = part.stat().st_size
        if total is not None and got != total:
            raise DownloadError(
                f"The download of {spec.key} from {url} stopped at {got} of {total} bytes. "
                f"The partial file {part} is kept: call again to resume."
            )
        return
    raise DownloadError(
        f"{url} refused to resume the download of {spec.key} and then refused the whole file too. "
        f"Try again later. {_by_hand(spec, target)}"
    )


def _too_slow(spec: DataFile, url: str, part: Path, clock: _Deadline, total: int | None) -> DownloadError:
    got = part.stat().st_size if part.exists() else 0
    return DownloadError(
        f"The download of {spec.key} from {url} did not finish within its deadline of {clock.seconds:g} s "
        f"({got} of {total if total is not None else 'unknown'} bytes). The partial file {part} is kept: "
        f"call again to resume, or allow more time (deadline= or {DEADLINE_ENV})."
    )


#: What a damaged archive raises while it is read (a bad CRC, a truncated or garbled stream).
_DAMAGED_ARCHIVE = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def _extract_member(archive: Path, member: str, out: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            if member not in zf.namelist():
                raise DataError(f"it has no member {member!r} (its first members: {zf.namelist()[:10]}).")
            with zf.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive) as tf:
        try:
            src = tf.extractfile(member)
        except KeyError:
            raise DataError(f"it has no member {member!r} (its first members: {tf.getnames()[:10]}).") from None
        if src is None:
            raise DataError(f"its member {member!r} is not a regular file.")
        with src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)


def _check_and_place(part: Path, spec: DataFile, target: Path) -> None:
    """Check ``part`` against the registry, move it to ``target`` atomically, and check it there again."""
    actual = sha256_of(part)
    if actual != spec.sha256:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{spec.key} from {spec.url} has sha256 {actual}, expected {spec.sha256}. "
            "The partial file was deleted; the source may have changed or the transfer was corrupted. "
            "Try again, or fetch the file by hand and put it at " + str(target)
        )
    os.replace(part, target)  # atomic: readers never see a half-written file
    placed = sha256_of(target)
    if placed != spec.sha256:  # another program wrote to the cache at the same moment
        target.unlink(missing_ok=True)
        raise ChecksumError(
            f"{target} changed while it was moved into place (sha256 {placed}, expected {spec.sha256}): "
            "another program writes to the cache folder. It was deleted; call again."
        )


def _by_hand(spec: DataFile, target: Path) -> str:
    what = f"the archive {spec.url} (member {spec.member!r})" if spec.member else spec.url
    return (
        f"Without network, download {what} by hand and put the file at {target}, "
        f"or set LMLIB_DATA to a folder that holds {spec.dataset}/{spec.name}."
    )


@dataclass
class RowReport:
    """What a reader did with each line of a file: rows kept, and rows rejected, counted by reason.

    Every reader of chapter 5 (labelled text, CoNLL tags, sentence pairs, JSON Lines) returns one,
    so a malformed row is never dropped silently: the notebook prints the report and glues the
    counts. Up to three examples per reason are kept, with their line numbers, for the printout.
    """

    source: str = "<lines>"
    lines: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    examples: dict[str, list[tuple[int | None, str]]] = field(default_factory=dict)

    def reject(self, reason: str, line_no: int | None = None, line: str = "") -> None:
        """Count one rejected row under ``reason`` (``line_no`` is 1-based; ``None`` if unknown)."""
        self.rejected[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 3:
            shown.append((line_no, line[:60]))

    @property
    def n_rejected(self) -> int:
        """Rows rejected, all reasons together."""
        return sum(self.rejected.values())

    def headline(self) -> str:
        """The first line of the printout; readers with more to say (tags, labels) override it."""
        return f"{self.source}: {self.lines:,} lines, {self.kept:,} rows kept, {self.n_rejected:,} rejected"

    def __str__(self) -> str:
        out = [self.headline()]
        for reason, n in self.rejected.most_common():
            shown = "; ".join(f"line {i}: {s!r}" if i is not None else repr(s) for i, s in self.examples[reason])
            out.append(f"  {n:,} x {reason}" + (f", e.g. {shown}" if shown else ""))
        return "\n".join(out)


def pad_right(rows, value: int, length: int | None = None) -> torch.Tensor:
    """(N, length) long tensor of id rows, each right-padded with ``value``.

    ``length`` defaults to the longest row; a row longer than ``length`` is an error (crop or
    filter first). Chapter 5's batch functions (classification, translation, tagging,
    instructions) all pad through this one function.
    """
    rows = [torch.as_tensor(r, dtype=torch.long) for r in rows]
    if not rows:
        raise ValueError("padding needs at least one row.")
    width = max(len(r) for r in rows) if length is None else length
    if any(len(r) > width for r in rows):
        raise ValueError(f"a row is longer than length={width}; crop or filter long rows first.")
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def read_text(name: str, file: str | None = None, encoding: str = "utf-8") -> str:
    """The text of a registered file (see its SOURCE notes for encodings, e.g. cp1252 for rt-polarity)."""
    file_path = path(name, file)
    try:
        return file_path.read_text(encoding=encoding)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{file_path} ({name}) is not {encoding} text: byte {err.object[err.start]:#04x} at offset "
            f"{err.start} is not valid {err.encoding}. Pass the file's encoding, e.g. "
            f"read_text({name!r}, ..., encoding='cp1252') or encoding='latin-1'."
        ) from err


def split(seq, val_fraction: float = 0.1):
    """Split a sequence into (train, validation) with the last ``val_fraction`` as validation.

    The split is contiguous rather than shuffled: for running text, shuffled windows would leak
    neighbouring context from training into validation.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
    n = int(len(seq) * (1 - val_fraction))
    return seq[:n], seq[n:]


#: The target id that ``F.cross_entropy`` skips (its default ``ignore_index``): prompt tokens in
#: instruction tuning, sub-words without a label in tagging, padding everywhere.
IGNORE_INDEX = -100


def check_targets(targets: torch.Tensor, n_classes: int | None = None, where: str = "targets",
                  classes: str = "vocab_size") -> None:
    """Raise a clear error for targets whose loss would be wrong, NaN or a device-side error.

    Targets are integer token or class ids, each in ``[0, n_classes)`` or :data:`IGNORE_INDEX`;
    a float target would be truncated, a batch with every target ignored has a 0/0 = NaN mean
    loss, and an id out of range fails inside the loss. :meth:`lmlib.model.GPT.check_input` and
    :class:`lmlib.train.Trainer` (for any model) both check through this one function.
    ``classes`` names what ``n_classes`` is, for the message.
    """
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{where}: targets must be a tensor of token or class ids, got {type(targets).__name__}.")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        first = targets.flatten()[0].item() if targets.numel() else None
        raise TypeError(
            f"{where}: targets must hold integer token ids (or {IGNORE_INDEX} to skip a position), got dtype "
            f"{targets.dtype} (first value {first!r}); a float target would be truncated. Build them with "
            "dtype=torch.long."
        )
    if targets.numel() == 0:
        raise ValueError(f"{where}: an empty batch (targets of shape {tuple(targets.shape)}); every batch needs "
                         "at least one target.")
    kept = targets != IGNORE_INDEX
    scored = targets.masked_fill(~kept, 0)  # 0 is a valid id: it hides only the ignored ones
    lo, hi, n_kept = torch.stack([scored.min(), scored.max(), kept.sum()]).tolist()  # one read from the device
    if lo < 0 or (n_classes is not None and hi >= n_classes):
        bad = targets[kept & ((targets < 0) | (targets >= (n_classes if n_classes is not None else hi + 1)))]
        limit = f"[0, {n_classes}) ({classes})" if n_classes is not None else ">= 0"
        raise ValueError(
            f"{where}: targets must be token ids in {limit} or {IGNORE_INDEX} (ignored), got "
            f"{bad.unique()[:5].tolist()}; were they encoded with another tokenizer, or padded with another "
            f"value than {IGNORE_INDEX}?"
        )
    if n_kept == 0:
        raise ValueError(
            f"{where}: every target is {IGNORE_INDEX} (ignored): the mean loss over no token is NaN. Leave at "
            "least one position to predict, or skip this batch."
        )


def random_batches(n_rows: int, batch_size: int, make_batch: Callable[[list[int]], T]) -> Callable[[torch.Generator], T]:
    """A ``batch_fn(generator)`` for :class:`lmlib.train.Trainer`: ``batch_size`` random row indices.

    Rows are drawn uniformly with replacement from ``range(n_rows)`` with the trainer's generator
    (so the data order is part of a checkpoint), and ``make_batch(rows)`` turns them into a batch.
    Every batch function of the course (token windows, classification, translation, instructions,
    tagging, question answering) is this one with its own ``make_batch``.
    """
    if not isinstance(n_rows, int) or n_rows < 1:
        raise ValueError(f"there must be at least one row to draw from, got n_rows={n_rows!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")

    def batch_fn(generator: torch.Generator) -> T:
        return make_batch(torch.randint(n_rows, (batch_size,), generator=generator).tolist())

    return batch_fn


def _check_windows(tokens: torch.Tensor, block_size: int) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ValueError(f"tokens must be a 1-D tensor of token ids, got {shape}.")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a whole number >= 1, got {block_size!r}.")
    if len(tokens) <= block_size:
        raise ValueError(f"Need more than block_size={block_size} tokens to cut a window, got {len(tokens)}.")


def windows_at(tokens: torch.Tensor, starts, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows of ``block_size`` tokens that begin at ``starts``, and their next-token targets."""
    starts = torch.as_tensor(starts, dtype=torch.long)
    offsets = torch.arange(block_size)
    return tokens[starts[:, None] + offsets], tokens[starts[:, None] + offsets + 1]


def window_batches(tokens: torch.Tensor, block_size: int, batch_size: int) -> Callable[[torch.Generator], tuple]:
    """A ``batch_fn`` of random windows of a 1-D token tensor (what pretraining reads)."""
    _check_windows(tokens, block_size)
    return random_batches(len(tokens) - block_size, batch_size, lambda starts: windows_at(tokens, starts, block_size))


def random_windows(
    tokens: torch.Tensor,
    block_size: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random contiguous windows and their next-token targets, each ``(batch, block)``."""
    _check_windows(tokens, block_size)
    starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator)
    x, y = windows_at(tokens, starts, block_size)
    if device is not None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x, y
