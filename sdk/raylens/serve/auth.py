"""API-key auth of the raylens services: resolved once when an app is built, enforced by every replica.

:func:`resolve_auth` runs where the app is built (``build_app``: in ``raylens serve``, ``serve run``,
or the build task of ``serve deploy`` on a cluster). It finds the key in, first found:

1. the app's ``api_key_file`` argument (a path; read then, so the file needs to exist only there);
2. the app's ``api_key`` argument (the key itself; keep config files that hold it private);
3. ``RAYLENS_API_KEY`` / ``RAYLENS_API_KEY_FILE`` in the environment of the process that builds it.

The resolved :class:`ServeAuth` is passed to the deployments as an argument, so every replica on
every node enforces the same key whatever its own environment holds. An empty key, or a key file
that is unreadable or empty, is an error (never "auth off"). With no key at all the service is
open only on a loopback address (``127.0.0.1``, ``::1``, ``localhost``): bound to any other address
it refuses to start unless ``open=True`` says so explicitly (:meth:`ServeAuth.check_bind`).

>>> auth = resolve_auth(api_key="s3cret-key", environ={})
>>> auth.required, auth
(True, ServeAuth(key from the app's api_key))
>>> auth.check("Bearer s3cret-key")
>>> resolve_auth(environ={}).check_bind("127.0.0.1")   # no key, loopback: open, with a warning
>>> resolve_auth(environ={}).check_bind("0.0.0.0")
Traceback (most recent call last):
...
raylens.serve.limits.ServeConfigError: refusing to serve on 0.0.0.0 without an API key: ...
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from raylens.serve.limits import (
    API_KEY_ENV,
    API_KEY_FILE_ENV,
    API_KEY_HEADER,
    ServeConfigError,
    ServeError,
    read_key_file,
)

__all__ = ["ServeAuth", "resolve_auth", "is_loopback", "app_flag", "API_KEY_ENV", "API_KEY_FILE_ENV", "API_KEY_HEADER"]

log = logging.getLogger("raylens.serve")

_FIX = (
    "set RAYLENS_API_KEY_FILE (or RAYLENS_API_KEY), give the app an `api_key_file`, or "
    "`raylens serve --api-key-file PATH`; to serve without auth on purpose, pass open=true "
    "(`raylens serve --open`)"
)


def app_flag(value, name: str) -> bool:
    """A true/false app argument (``serve run ... open=true`` passes the text ``"true"``).

    >>> app_flag("true", "open"), app_flag(None, "open"), app_flag(False, "open")
    (True, False, False)
    """
    if isinstance(value, bool) or value is None:
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"`{name}` must be true or false, got {value!r}")


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` only accepts connections from this machine (``127.0.0.0/8``, ``::1``, localhost).

    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0"), is_loopback("::")
    (True, True, False, False)
    """
    if not host:
        return False
    host = host.strip().strip("[]")
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


@dataclass(frozen=True)
class ServeAuth:
    """How a service authenticates requests: one API key, or explicitly open.

    Build it with :func:`resolve_auth`. It pickles, so it travels to replicas as a deployment
    argument; ``repr`` never shows the key.
    """

    api_key: str | None = field(default=None, repr=False)
    """The key requests must carry (``x-api-key`` or ``Authorization: Bearer``); None: no key."""
    open: bool = False
    """True: serve without a key on any address (an explicit choice; the default refuses public addresses)."""
    source: str = ""
    """Where the key came from (for messages and logs; never the key itself)."""

    def __post_init__(self):
        if self.api_key is not None:
            if not isinstance(self.api_key, str) or not self.api_key.strip():
                raise ServeConfigError(f"the API key is empty, which would turn auth off; {_FIX}")
            if self.api_key != self.api_key.strip():
                raise ServeConfigError("the API key starts or ends with whitespace; remove it")
        if not isinstance(self.open, bool):
            raise TypeError(f"`open` must be True or False, got {self.open!r}")
        if self.open and self.api_key is not None:
            raise ServeConfigError(
                f"an API key is configured ({self.source or 'given'}) and open=true asks for no auth; choose one"
            )

    def __repr__(self) -> str:
        if self.api_key is not None:
            return f"ServeAuth(key from {self.source or 'an argument'})"
        return "ServeAuth(open)" if self.open else "ServeAuth(no key: loopback only)"

    @property
    def required(self) -> bool:
        """Whether requests must carry the key."""
        return self.api_key is not None

    def check(self, provided: str | None) -> None:
        """401 unless ``provided`` (a header value, raw or ``"Bearer <key>"``) is the key; constant time."""
        if self.api_key is None:
            return
        if provided and provided[:7].lower() == "bearer ":
            provided = provided[7:].strip()
        if not provided or not hmac.compare_digest(provided.encode("utf-8"), self.api_key.encode("utf-8")):
            raise ServeError(
                401,
                "unauthorized",
                f"a valid API key is required (header {API_KEY_HEADER!r} or 'Authorization: Bearer <key>')",
                headers={"www-authenticate": 'Bearer realm="raylens"'},
            )

    def check_bind(self, host: str | None) -> None:
        """Refuse (:class:`~raylens.serve.limits.ServeConfigError`) to serve on a non-loopback ``host``
        without a key, unless ``open``; log a warning whenever the service runs without a key."""
        if self.api_key is not None:
            return
        if self.open:
            log.warning("serving on %s WITHOUT an API key (open=true): anyone who can reach it can use it", host)
            return
        if not is_loopback(host):
            raise ServeConfigError(f"refusing to serve on {host or 'an unknown address'} without an API key: {_FIX}")
        log.warning("no API key configured: serving without auth, reachable from this machine only (%s)", host)


def resolve_auth(
    api_key: str | None = None,
    api_key_file: str | os.PathLike | None = None,
    open: bool = False,  # noqa: A002 - the name users write in configs
    *,
    environ: Mapping[str, str] | None = None,
) -> ServeAuth:
    """The service's auth from an app's arguments, else the environment (see the module docstring).

    Raises :class:`~raylens.serve.limits.ServeConfigError` for an empty key, an unreadable or empty
    key file, or a key together with ``open=True``.
    """
    env = os.environ if environ is None else environ
    if not isinstance(open, bool):
        raise TypeError(f"`open` must be true or false, got {open!r}")
    if api_key_file is not None:
        if not os.fspath(api_key_file).strip():
            raise ServeConfigError(f"`api_key_file` is empty; {_FIX}")
        key, source = read_key_file(api_key_file, what="api_key_file"), "the app's api_key_file"
    elif api_key is not None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ServeConfigError(f"`api_key` is empty, which would turn auth off; {_FIX}")
        key, source = api_key.strip(), "the app's api_key"
    elif env.get(API_KEY_ENV) is not None:
        if not env[API_KEY_ENV].strip():
            raise ServeConfigError(
                f"{API_KEY_ENV} is set but empty, which would turn auth off; set the key or unset it"
            )
        key, source = env[API_KEY_ENV].strip(), API_KEY_ENV
    elif env.get(API_KEY_FILE_ENV) is not None:
        if not env[API_KEY_FILE_ENV].strip():
            raise ServeConfigError(f"{API_KEY_FILE_ENV} is set but empty; set it to the key file's path, or unset it")
        key, source = read_key_file(env[API_KEY_FILE_ENV], what=API_KEY_FILE_ENV), API_KEY_FILE_ENV
    else:
        key, source = None, ""
    return ServeAuth(api_key=key, open=open, source=source)
