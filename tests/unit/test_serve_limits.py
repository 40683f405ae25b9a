"""raylens.serve.limits: body/pixel/batch limits, API key, safe zip reading and extraction, JSON errors."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest

from raylens.serve.limits import (
    ServeError,
    ServeLimits,
    check_api_key,
    check_batch,
    check_body_size,
    check_pixels,
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
