"""The course's data sets: a registry, checked downloads, and the loaders the chapters share.

Derived in chapter 1 ("What a language model is") and used by every chapter after it.

``path(name, file)`` finds a file in this order:

1. the mirror folders listed in ``LMLIB_DATA`` (``os.pathsep``-separated), laid out as
   ``<mirror>/<name>/<file>`` (the course's CI points it at its shared copy);
2. the cache (``LMLIB_CACHE``; else ``data/cache`` inside a clone of the course, else
   ``~/.cache/lmlib``);
3. a download from the file's public home, with a progress bar, resumed if it was interrupted,
   checked against the registry's sha256, then moved into the cache atomically.

The registry (``lmlib/datasets.toml``) records each file's URL, size, sha256 and the data set's
licence and citation; :func:`credit` formats the credit line that a notebook shows.
"""
from __future__ import annotations

import difflib
import hashlib
import http.client
import os
import shutil
import tarfile
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import torch

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


def _hash_cached(file: Path) -> str:
    """sha256 of a file, computed once per process for an unchanged file (path, size, mtime)."""
    st = file.stat()
    key = (str(file.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        _verified[key] = sha256_of(file)
    return _verified[key]


def path(name: str, file: str | None = None, *, download: bool = True) -> Path:
    """The local path of a registered file, fetching and checking it if needed (see module doc)."""
    spec = dataset(name).file(file)
    for mirror in mirrors():
        candidate = mirror / name / spec.name
        if candidate.is_file():
            actual = _hash_cached(candidate)
            if actual != spec.sha256:
                raise ChecksumError(
                    f"{candidate} (mirror copy of {spec.key}) has sha256 {actual}, expected {spec.sha256}. "
                    "The mirror is damaged or holds another version: replace the file."
                )
            return candidate
    target = cache_dir() / name / spec.name
    if target.is_file():
        if _hash_cached(target) == spec.sha256:
            return target
        target.unlink()  # a damaged cache entry is fetched again
    if not download:
        raise DataError(f"{spec.key} is not in the mirrors {mirrors()} nor in the cache {target.parent}.")
    fetch(spec, target)
    return target


def fetch(spec: DataFile, target: Path) -> Path:
    """Download ``spec`` into ``target`` (extracting its archive member if it has one), checked."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if spec.member is None:
        part = _download(spec.url, target.with_name(target.name + ".part"), spec, target)
        _check_and_place(part, spec, target)
        return target
    archive_dir = cache_dir() / "_archives"
    archive = archive_dir / _archive_name(spec.url)
    if not archive.is_file():
        archive_dir.mkdir(parents=True, exist_ok=True)
        part = _download(spec.url, archive.with_name(archive.name + ".part"), spec, target)
        os.replace(part, archive)
    extracted = target.with_name(target.name + ".part")
    try:
        _extract_member(archive, spec.member, extracted)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        archive.unlink(missing_ok=True)
        raise DownloadError(f"The archive {spec.url} is damaged ({err}); it was deleted, try again.") from err
    try:
        _check_and_place(extracted, spec, target)
    except ChecksumError:
        archive.unlink(missing_ok=True)  # the archive holds another version: do not reuse it
        raise
    return target


def _archive_name(url: str) -> str:
    base = url.rstrip("/").rsplit("/", 1)[-1]
    return base.replace("+", "_") or hashlib.sha256(url.encode()).hexdigest()[:16]


def _download(url: str, part: Path, spec: DataFile, target: Path) -> Path:
    """Stream ``url`` into ``part``, resuming a previous partial download when the server allows it."""
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "lmlib (course data downloader)"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416:  # our partial file is no prefix of theirs: start over
            part.unlink(missing_ok=True)
            return _download(url, part, spec, target)
        raise DownloadError(
            f"Downloading {spec.key} from {url} failed: HTTP {err.code} {err.reason}. "
            f"{_by_hand(spec, target)}"
        ) from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"Could not reach {url} for {spec.key} ({reason}). {_by_hand(spec, target)}") from err
    with response:
        resumed = have > 0 and response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        try:
            with open(part, "ab" if resumed else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, desc=spec.key, leave=False
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        except (http.client.IncompleteRead, OSError) as err:
            raise DownloadError(
                f"The download of {spec.key} from {url} was interrupted ({err!r}) after "
                f"{part.stat().st_size} bytes. The partial file {part} is kept: call again to resume."
            ) from err
    got = part.stat().st_size
    if total is not None and got != total:
        raise DownloadError(
            f"The download of {spec.key} from {url} stopped at {got} of {total} bytes. "
            f"The partial file {part} is kept: call again to resume."
        )
    return part


def _extract_member(archive: Path, member: str, out: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            if member not in zf.namelist():
                raise DataError(f"{archive.name} has no member {member!r}; it has {zf.namelist()[:10]}")
            with zf.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive) as tf:
        try:
            src = tf.extractfile(member)
        except KeyError:
            raise DataError(f"{archive.name} has no member {member!r}; it has {tf.getnames()[:10]}") from None
        if src is None:
            raise DataError(f"{member!r} in {archive.name} is not a regular file.")
        with src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)


def _check_and_place(part: Path, spec: DataFile, target: Path) -> None:
    actual = sha256_of(part)
    if actual != spec.sha256:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{spec.key} from {spec.url} has sha256 {actual}, expected {spec.sha256}. "
            "The partial file was deleted; the source may have changed or the transfer was corrupted. "
            "Try again, or fetch the file by hand and put it at " + str(target)
        )
    os.replace(part, target)  # atomic: readers never see a half-written file


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
    return path(name, file).read_text(encoding=encoding)


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
