"""lmlib.data: the registry, the mirror, and real downloads from a loopback HTTP server."""
import dataclasses
import io
import tarfile
import zipfile

import pytest
import torch

import lmlib.data as data


def test_registry_is_complete_and_well_formed():
    reg = data.registry()
    assert {"tinyshakespeare", "wikitext-2", "sms-spam-collection", "fra-eng", "wnut17"} <= set(reg)
    for ds in reg.values():
        assert ds.default in ds.files and ds.licence and ds.citation and ds.homepage.startswith("http")
        for f in ds.files.values():
            assert len(f.sha256) == 64 and f.url.startswith(("http://", "https://"))


def test_unknown_names_say_what_exists():
    with pytest.raises(ValueError, match="Did you mean 'tinyshakespeare'"):
        data.dataset("tinyshakespear")
    with pytest.raises(ValueError, match="has no file 'train.txt'"):
        data.path("wikitext-2", "train.txt")


def test_every_registry_entry_matches_the_mirror(mirror, monkeypatch):
    """The registry's checksums are the mirror's, file by file (so readers' downloads match CI)."""
    monkeypatch.setenv("LMLIB_DATA", str(mirror))
    for ds in data.registry().values():
        for name, spec in ds.files.items():
            p = data.path(ds.name, name, download=False)
            # the course's own releases are committed in the clone (models/), not in the mirror
            assert p == (data.release_dir() if (data.release_dir() / ds.name).is_dir() else mirror) / ds.name / name
            assert p.stat().st_size == spec.size


def test_a_release_that_does_not_match_the_registry_is_an_error(monkeypatch, tmp_path):
    folder = tmp_path / "models" / "course-gpt"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    monkeypatch.setattr(data, "release_dir", lambda: tmp_path / "models")
    monkeypatch.delenv("LMLIB_DATA", raising=False)
    with pytest.raises(data.ChecksumError, match="registry_entry"):
        data.path("course-gpt", "config.json")


def test_damaged_mirror_file_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text("not shakespeare")
    monkeypatch.setenv("LMLIB_DATA", str(tmp_path))
    with pytest.raises(data.ChecksumError, match="mirror copy"):
        data.path("tinyshakespeare")


def test_missing_mirror_folder_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LMLIB_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(data.DataError, match="not a folder"):
        data.path("tinyshakespeare")


def _serve(monkeypatch, server, mirror, dataset, file, url_path, body=None):
    """Point one registry entry at the loopback server, serving the mirror's bytes (or `body`)."""
    base, handler = server
    spec = data.dataset(dataset).files[file]
    handler.routes[url_path] = body if body is not None else (mirror / dataset / file).read_bytes()
    ds = data.dataset(dataset)
    patched = dataclasses.replace(ds, files={**ds.files, file: dataclasses.replace(spec, url=base + url_path)})
    monkeypatch.setitem(data.registry(), dataset, patched)
    return handler


def test_download_good_file(isolated_data, server, mirror, monkeypatch):
    _serve(monkeypatch, server, mirror, "tinyshakespeare", "input.txt", "/input.txt")
    p = data.path("tinyshakespeare")
    assert p == isolated_data / "tinyshakespeare" / "input.txt"
    assert data.sha256_of(p) == data.dataset("tinyshakespeare").file().sha256
    assert not list(p.parent.glob("*.part"))
    # A second call is served from the cache, with no new request.
    handler = server[1]
    n = len(handler.requests)
    assert data.path("tinyshakespeare") == p and len(handler.requests) == n


def test_corrupted_download_is_deleted_and_reported(isolated_data, server, mirror, monkeypatch):
    handler = _serve(monkeypatch, server, mirror, "tinyshakespeare", "input.txt", "/input.txt")
    handler.modes["/input.txt"] = "corrupt"
    spec = data.dataset("tinyshakespeare").file()
    with pytest.raises(data.ChecksumError) as err:
        data.path("tinyshakespeare")
    message = str(err.value)
    assert "tinyshakespeare/input.txt" in message and spec.sha256 in message and "expected" in message
    assert not any((isolated_data / "tinyshakespeare").iterdir())  # nothing half-written is left


def test_missing_file_names_url_and_target_folder(isolated_data, server, mirror, monkeypatch):
    handler = _serve(monkeypatch, server, mirror, "tinyshakespeare", "input.txt", "/input.txt")
    handler.modes["/input.txt"] = "missing"
    with pytest.raises(data.DownloadError, match="HTTP 404") as err:
        data.path("tinyshakespeare")
    assert server[0] + "/input.txt" in str(err.value)
    assert str(isolated_data / "tinyshakespeare" / "input.txt") in str(err.value)


def test_no_network_names_url_and_where_to_put_the_file(isolated_data, monkeypatch):
    spec = data.dataset("tinyshakespeare").file()
    dead = dataclasses.replace(spec, url="http://127.0.0.1:9/input.txt")  # port 9: nothing listens
    ds = data.dataset("tinyshakespeare")
    monkeypatch.setitem(data.registry(), "tinyshakespeare", dataclasses.replace(ds, files={"input.txt": dead}))
    with pytest.raises(data.DownloadError, match="Could not reach http://127.0.0.1:9/input.txt") as err:
        data.path("tinyshakespeare")
    assert "put the file at" in str(err.value) and "LMLIB_DATA" in str(err.value)


def test_interrupted_download_resumes(isolated_data, server, mirror, monkeypatch):
    handler = _serve(monkeypatch, server, mirror, "tinyshakespeare", "input.txt", "/input.txt")
    handler.modes["/input.txt"] = "truncate"
    with pytest.raises(data.DownloadError, match="call again to resume"):
        data.path("tinyshakespeare")
    part = isolated_data / "tinyshakespeare" / "input.txt.part"
    kept = part.stat().st_size
    assert 0 < kept < data.dataset("tinyshakespeare").file().size
    p = data.path("tinyshakespeare")  # resumes with a Range request
    assert handler.requests[-1] == ("/input.txt", f"bytes={kept}-")
    assert data.sha256_of(p) == data.dataset("tinyshakespeare").file().sha256 and not part.exists()


def test_zip_member_is_extracted_and_checked(isolated_data, server, mirror, monkeypatch):
    raw = (mirror / "sms-spam-collection" / "SMSSpamCollection").read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("SMSSpamCollection", raw)
        zf.writestr("readme", b"about")
    _serve(monkeypatch, server, mirror, "sms-spam-collection", "SMSSpamCollection", "/sms.zip", buf.getvalue())
    p = data.path("sms-spam-collection")
    assert p.read_bytes() == raw


def test_tar_member_with_wrong_content_is_rejected_and_archive_dropped(isolated_data, server, mirror, monkeypatch):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        payload = b"a different version of the file\n"
        info = tarfile.TarInfo("rt-polaritydata/rt-polarity.pos")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    _serve(monkeypatch, server, mirror, "rt-polarity", "rt-polarity.pos", "/rt.tar.gz", buf.getvalue())
    with pytest.raises(data.ChecksumError, match="rt-polarity/rt-polarity.pos"):
        data.path("rt-polarity", "rt-polarity.pos")
    assert not list((isolated_data / "_archives").iterdir())


def test_split_and_windows():
    train, val = data.split(list(range(100)), 0.1)
    assert train == list(range(90)) and val == list(range(90, 100))
    with pytest.raises(ValueError):
        data.split([1, 2], 1.5)
    tokens = torch.arange(50)
    x, y = data.random_windows(tokens, block_size=8, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y, x + 1)  # targets are the inputs shifted by one
    with pytest.raises(ValueError, match="block_size=50"):
        data.random_windows(tokens, 50, 2)
    with pytest.raises(ValueError, match="1-D"):
        data.random_windows(tokens.view(5, 10), 4, 2)


def test_row_report_counts_reasons_and_keeps_three_examples():
    from lmlib.data import RowReport

    report = RowReport("demo.tsv", lines=6, kept=1)
    for no in range(1, 5):
        report.reject("no tab", no, f"row {no}")
    report.reject("empty text", None, "")
    assert report.rejected == {"no tab": 4, "empty text": 1} and report.n_rejected == 5
    assert report.examples["no tab"] == [(1, "row 1"), (2, "row 2"), (3, "row 3")]
    text = str(report)
    assert text.splitlines()[0] == "demo.tsv: 6 lines, 1 rows kept, 5 rejected"
    assert "4 x no tab, e.g. line 1: 'row 1'" in text and "1 x empty text" in text


def test_pad_right_pads_to_the_longest_or_a_given_length():
    from lmlib.data import pad_right

    assert pad_right([[1, 2, 3], [4]], 0).tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad_right([torch.tensor([5])], -100, length=3).tolist() == [[5, -100, -100]]
    with pytest.raises(ValueError, match="longer than length=2"):
        pad_right([[1, 2, 3]], 0, length=2)
    with pytest.raises(ValueError, match="at least one row"):
        pad_right([], 0)
