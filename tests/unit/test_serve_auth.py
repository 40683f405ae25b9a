"""raylens.serve.auth, forms and the error mapping: the key is resolved once, fails closed, never leaks;
a public address needs a key or an explicit open; overload and timeouts answer 503/504."""

from __future__ import annotations

import pickle

import pytest

from raylens.serve.auth import ServeAuth, is_loopback, resolve_auth
from raylens.serve.forms import parse_multipart
from raylens.serve.limits import ServeConfigError, ServeError, check_api_key, error_response


def _status(fn, *a, **kw) -> tuple[int, str]:
    with pytest.raises(ServeError) as e:
        fn(*a, **kw)
    return e.value.status_code, e.value.code


def test_the_key_comes_from_the_app_first_then_the_environment(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("file-key-0123456789\nignored second line\n")
    env = {"RAYLENS_API_KEY": "env-key-0123456789", "RAYLENS_API_KEY_FILE": str(key_file)}
    assert resolve_auth(api_key_file=key_file, api_key="arg", environ=env).api_key == "file-key-0123456789"
    assert resolve_auth(api_key="arg-key-0123456789", environ=env).api_key == "arg-key-0123456789"
    assert resolve_auth(environ=env).source == "RAYLENS_API_KEY"
    assert resolve_auth(environ={"RAYLENS_API_KEY_FILE": str(key_file)}).api_key == "file-key-0123456789"
    none = resolve_auth(environ={})
    assert not none.required and not none.open


@pytest.mark.parametrize(
    "kwargs,env",
    [
        ({"api_key": ""}, {}),
        ({"api_key": "   "}, {}),
        ({}, {"RAYLENS_API_KEY": ""}),
        ({}, {"RAYLENS_API_KEY_FILE": ""}),
        ({}, {"RAYLENS_API_KEY_FILE": "/nonexistent/key"}),
        ({"api_key_file": "/nonexistent/key"}, {}),
        ({"api_key": "k" * 20, "open": True}, {}),
    ],
)
def test_an_empty_or_unreadable_key_is_an_error_never_auth_off(kwargs, env):
    with pytest.raises(ServeConfigError):
        resolve_auth(**kwargs, environ=env)


def test_an_empty_key_file_fails_closed(tmp_path):
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ServeConfigError, match="empty"):
        resolve_auth(api_key_file=tmp_path / "empty", environ={})


def test_the_key_is_checked_in_constant_time_and_never_shown():
    auth = resolve_auth(api_key="s3cret-key-0123456789", environ={})
    auth.check("s3cret-key-0123456789")
    auth.check("Bearer s3cret-key-0123456789")
    auth.check("bearer s3cret-key-0123456789")
    for wrong in (None, "", "s3cret", "Bearer ", "Basic s3cret-key-0123456789"):
        assert _status(auth.check, wrong) == (401, "unauthorized")
    assert "s3cret" not in repr(auth) and "s3cret" not in str(auth)
    back = pickle.loads(pickle.dumps(auth))  # it travels to replicas as a deployment argument
    assert back == auth and back.api_key == auth.api_key
    ServeAuth(open=True).check(None)  # open on purpose: every request passes


def test_a_public_address_needs_a_key_or_an_explicit_open():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.0.1")
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com", "", None))
    no_key = resolve_auth(environ={})
    no_key.check_bind("127.0.0.1")
    for host in ("0.0.0.0", "192.168.1.10", None):
        with pytest.raises(ServeConfigError, match="without an API key"):
            no_key.check_bind(host)
    ServeAuth(open=True).check_bind("0.0.0.0")
    resolve_auth(api_key="k" * 20, environ={}).check_bind("0.0.0.0")


def test_the_legacy_env_check_fails_closed_too(monkeypatch):
    monkeypatch.setenv("RAYLENS_API_KEY", "")
    with pytest.raises(ServeConfigError, match="empty"):
        check_api_key("anything")
    with pytest.raises(ServeConfigError):
        check_api_key("anything", expected="")
    status, body = error_response(ServeConfigError("RAYLENS_API_KEY is set but empty"))
    assert status == 500 and "RAYLENS" not in str(body)  # the client learns nothing of the config


def test_overload_and_timeouts_answer_503_and_504():
    class BackPressureError(Exception):  # Serve's name for a full queue (max_queued_requests)
        pass

    class GetTimeoutError(Exception):
        pass

    assert error_response(BackPressureError("queue full"))[0] == 503
    assert error_response(BackPressureError("x"))[1]["error"]["code"] == "overloaded"
    assert error_response(TimeoutError())[0] == 504 and error_response(GetTimeoutError())[0] == 504


def test_multipart_forms_keep_file_bytes_whatever_the_part_headers():
    png = b"\x89PNG\r\n\x1a\n\xff\xfe binary"
    body = (
        b'--b\r\nContent-Disposition: form-data; name="image"\r\nContent-Type: image/png\r\n\r\n' + png + b"\r\n"
        b'--b\r\nContent-Disposition: form-data; name="k"\r\n\r\n3\r\n--b--\r\n'
    )
    assert parse_multipart("multipart/form-data; boundary=b", body, max_files=2) == ({"k": "3"}, [png])
    assert _status(parse_multipart, "multipart/form-data", body, max_files=2) == (400, "bad_form")
    twice = body.replace(b"--b--", b'--b\r\nContent-Disposition: form-data; name="k"\r\n\r\n4\r\n--b--')
    assert _status(parse_multipart, "multipart/form-data; boundary=b", twice, max_files=2) == (422, "repeated_field")
    many = body.replace(b"--b--", body.split(b'--b\r\nContent-Disposition: form-data; name="k"')[0] * 2 + b"--b--")
    assert _status(parse_multipart, "multipart/form-data; boundary=b", many, max_files=2)[0] == 413
