"""raylens.serve.limits: body/pixel/batch limits, API key, safe zip reading and extraction, JSON errors."""

from __future__ import annotations

import io
import stat
import struct
import zipfile

import pytest

from raylens.serve.limits import (
    ServeError,
    ServeLimits,
    check_api_key,
    check_batch,
    check_body_size,
    check_pixels,
    declared_entries,
    error_body,
    error_response,
    is_safe_member_name,
    safe_extract_zip,
    safe_zip_members,
)


def _zip(entries: dict[str, bytes], *, symlink: str | None = None, compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _status(fn, *a, **kw):
    with pytest.raises(ServeError) as e:
        fn(*a, **kw)
    return e.value.status_code, e.value.code


def test_limits_validate_their_fields():
    with pytest.raises(ValueError, match="max_body_bytes"):
        ServeLimits(max_body_bytes=0)
    with pytest.raises(ValueError, match="max_compression_ratio"):
        ServeLimits(max_compression_ratio=0.5)


def test_limits_from_env(monkeypatch):
    monkeypatch.setenv("RAYLENS_MAX_BODY_BYTES", "123")
    monkeypatch.setenv("RAYLENS_MAX_COMPRESSION_RATIO", "7.5")
    lim = ServeLimits.from_env()
    assert lim.max_body_bytes == 123 and lim.max_compression_ratio == 7.5


def test_body_pixel_and_batch_limits():
    lim = ServeLimits(max_body_bytes=100, max_pixels=1000, max_batch=2)
    check_body_size(100, lim)
    assert _status(check_body_size, 101, lim) == (413, "body_too_large")
    assert _status(check_body_size, 0, lim) == (400, "empty_body")
    check_pixels(1000, lim)
    assert _status(check_pixels, 1001, lim) == (413, "too_many_pixels")
    check_batch(2, lim)
    assert _status(check_batch, 3, lim) == (413, "batch_too_large")
    assert _status(check_batch, 0, lim) == (400, "empty_batch")


def test_api_key(monkeypatch):
    monkeypatch.delenv("RAYLENS_API_KEY", raising=False)
    check_api_key(None)  # no key configured: open
    monkeypatch.setenv("RAYLENS_API_KEY", "s3cret")
    check_api_key("s3cret")
    check_api_key("Bearer s3cret")
    assert _status(check_api_key, None) == (401, "unauthorized")
    assert _status(check_api_key, "wrong") == (401, "unauthorized")


@pytest.mark.parametrize(
    "name,ok",
    [
        ("a/b.dcm", True),
        ("series/IM0001", True),
        ("./x.dcm", True),
        ("../evil", False),
        ("a/../../evil", False),
        ("/etc/passwd", False),
        ("C:/x", False),
        ("a\\..\\b", False),
        ("", False),
        ("a/\x00b", False),
        ("..", False),
    ],
)
def test_member_names(name, ok):
    assert is_safe_member_name(name) is ok


def test_safe_zip_members_reads_in_memory():
    members = safe_zip_members(_zip({"a/1.dcm": b"one", "a/2.dcm": b"two", "dir/": b""}))
    assert members == {"a/1.dcm": b"one", "a/2.dcm": b"two"}


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"not a zip at all", (400, "bad_archive")),
        (b"", (400, "bad_archive")),
        (_zip({"../../escape.dcm": b"x"}), (400, "unsafe_archive_path")),
        (_zip({"/abs.dcm": b"x"}), (400, "unsafe_archive_path")),
        (_zip({"ok.dcm": b"x"}, symlink="link.dcm"), (400, "unsafe_archive_link")),
    ],
)
def test_bad_archives_are_400(data, expected):
    assert _status(safe_zip_members, data) == expected


def test_archive_size_limits_are_413():
    lim = ServeLimits(max_files=2)
    assert _status(safe_zip_members, _zip({"a": b"1", "b": b"2", "c": b"3"}), lim) == (413, "too_many_files")
    lim = ServeLimits(max_uncompressed_bytes=10)
    assert _status(safe_zip_members, _zip({"a": b"x" * 11}), lim) == (413, "archive_too_large")
    bomb = _zip({"bomb": b"\0" * 2_000_000}, compression=zipfile.ZIP_DEFLATED)
    assert len(bomb) < 10_000
    assert _status(safe_zip_members, bomb, ServeLimits(max_compression_ratio=50)) == (413, "archive_ratio")


def test_safe_extract_stays_inside_the_target(tmp_path):
    written = safe_extract_zip(_zip({"s/1.dcm": b"a", "2.dcm": b"b"}), tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["2.dcm", "s/1.dcm"]
    assert _status(safe_extract_zip, _zip({"../x.dcm": b"a"}), tmp_path / "out2") == (400, "unsafe_archive_path")
    assert not (tmp_path / "x.dcm").exists()


def test_error_bodies():
    assert error_body(413, "too_big", "msg") == {"error": {"status": 413, "code": "too_big", "message": "msg"}}
    assert error_response(ServeError(401, "unauthorized", "no"))[0] == 401
    assert error_response(ValueError("bad thing"))[0] == 422
    status, body = error_response(RuntimeError("secret detail"))
    assert status == 500 and "secret" not in str(body)


def test_serve_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(ServeError(413, "x", "y")))
    assert (e.status_code, e.code, e.message) == (413, "x", "y")


def _corrupt_deflate_zip() -> bytes:
    """A zip whose one deflated member has a corrupt stream (the first block says BTYPE=11, which zlib
    refuses with zlib.error), headers and sizes intact."""
    data = bytearray(_zip({"scan/1.dcm": bytes(range(256)) * 64}, compression=zipfile.ZIP_DEFLATED))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.infolist()[0]
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len  # first byte of the compressed stream
    data[start] = 0xFF
    return bytes(data)


def test_a_corrupt_deflate_member_is_a_400_not_a_500(tmp_path):
    import zlib

    data = _corrupt_deflate_zip()
    with zipfile.ZipFile(io.BytesIO(data)) as zf, pytest.raises(zlib.error):  # what made the service answer 500
        zf.read("scan/1.dcm")
    assert _status(safe_zip_members, data) == (400, "bad_archive")
    assert _status(safe_extract_zip, data, tmp_path / "out") == (400, "bad_archive")
    status, body = error_response(pytest.raises(ServeError, safe_zip_members, data).value)
    assert status == 400 and "scan/1.dcm" in body["error"]["message"]


def _eocd(entries: int, *, zip64_entries: int | None = None) -> bytes:
    """Only an end-of-central-directory record (optionally zip64) declaring ``entries``: no directory at all."""
    out = b""
    if zip64_entries is not None:
        out += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, zip64_entries, zip64_entries, 0, 0)
        out += struct.pack("<4sLQL", b"PK\x06\x07", 0, 0, 1)
    return out + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, min(entries, 0xFFFF), min(entries, 0xFFFF), 0, 0, 0)


def test_the_entry_count_is_checked_before_the_central_directory_is_parsed():
    """An archive declaring more entries than the limit allows is refused from its last 22 bytes (413),
    not after zipfile has built one object per entry (which would answer 400 here: there is no directory)."""
    lim = ServeLimits(max_files=10)
    assert declared_entries(_eocd(21)) == 21
    assert _status(safe_zip_members, _eocd(21), lim) == (413, "too_many_files")
    assert _status(safe_zip_members, _eocd(0xFFFF, zip64_entries=2**40), lim) == (413, "too_many_files")
    assert declared_entries(_eocd(0xFFFF, zip64_entries=2**40)) == 2**40
    # within the limit, zipfile parses the (here empty) directory: no members, no error
    assert safe_zip_members(_eocd(20), lim) == {}
    # a real archive at the file limit with its folder entries passes; the files are counted exactly
    entries = {f"d{i}/": b"" for i in range(10)} | {f"d{i}/f.dcm": b"x" for i in range(10)}
    assert len(safe_zip_members(_zip(entries), lim)) == 10
    assert _status(safe_zip_members, _zip(entries | {"extra.dcm": b"x"}), lim) == (413, "too_many_files")
