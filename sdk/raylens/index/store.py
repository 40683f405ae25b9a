"""One index = one directory, written atomically, read as one pinned version, verified on load.

Writing: :func:`write_directory` writes every file into a temporary directory beside the target,
fsyncs them, then swaps it in (``renameat2(RENAME_EXCHANGE)`` on Linux: one atomic step; elsewhere
two renames, with the old version kept as ``.NAME.old-*`` until the new one is in place, which a load
falls back to). A save killed at any point (SIGKILL included) leaves the old or the new version whole.

Reading: :func:`open_version` pins one version for as long as a load reads it, so a load never sees
a half-written, a mixed or a deleted version, whatever saves run meanwhile:

* it opens the index directory as a directory descriptor and takes a *shared* ``flock`` on it;
  every file of the load is then read through that descriptor (``/proc/self/fd/N/<file>``), so all
  of them come from the one directory inode it pinned, even if a save swaps a new version in;
* a save retires the version it replaced only under an *exclusive*, non-blocking ``flock``: a version
  some load still holds is left as ``.NAME.old-*`` and removed by a later save;
* a load that opened a version just before a save removed it (it finds the directory empty once it
  holds its lock) starts again from the directory's name, which then holds the new version.

Locks are advisory ``flock`` locks on local file systems; several processes and threads may load and
save the same index at once. Reading through the descriptor needs Linux's ``/proc/self/fd``; elsewhere
files are read by name (a pinned version is still never deleted under a load, and a crashed save
still leaves a whole version).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from raylens.index.errors import IndexCorruptError, IndexNotFoundError
from raylens.index.manifest import MANIFEST_NAME, IndexManifest

__all__ = [
    "sha256_file",
    "write_directory",
    "find_index_dir",
    "read_manifest",
    "verify_checksums",
    "open_version",
    "PinnedVersion",
]

log = logging.getLogger(__name__)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_OPEN_RETRIES = 50
_PROC_FD = Path("/proc/self/fd")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2); False when the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, f"renameat2 exchange failed: {os.strerror(err)}", str(a))


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock so two processes never save the same index at once."""
    lock = directory.parent / f".{directory.name}.lock"
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_unpinned(path: Path) -> bool:
    """Delete a retired version unless a load holds it (its shared lock); True when it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.debug("index version %s is being read; a later save removes it", path)
            return False
        shutil.rmtree(path, ignore_errors=True)  # under the lock: a load that waits for it finds it empty
        return not path.exists()
    finally:
        os.close(fd)


def _clean_stale(directory: Path) -> None:
    """Remove what crashed saves left (temp dirs of dead writers) and retired versions no load holds."""
    for p in directory.parent.glob(f".{directory.name}.tmp-*"):
        try:
            pid = int(p.name.rsplit(".tmp-", 1)[1].split("-", 1)[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
    if (directory / MANIFEST_NAME).is_file():
        for p in directory.parent.glob(f".{directory.name}.old-*"):
            _remove_unpinned(p)


def write_directory(directory: Path, write_files: Callable[[Path], IndexManifest]) -> IndexManifest:
    """Write an index directory atomically.

    ``write_files(tmp)`` writes the data files into ``tmp`` and returns the manifest (without
    checksums); this function fsyncs them, adds the checksums, writes the manifest last, and swaps
    ``tmp`` into place. The previous version stays loadable until the swap, and stays on disk until
    no load holds it.
    """
    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    with _dir_lock(directory):
        _clean_stale(directory)
        tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            manifest = write_files(tmp)
            sums = {}
            for f in sorted(tmp.iterdir()):
                if f.name != MANIFEST_NAME:
                    _fsync_path(f)
                    sums[f.name] = sha256_file(f)
            manifest.checksums = sums
            mpath = tmp / MANIFEST_NAME
            with open(mpath, "w") as fh:
                fh.write(manifest.to_json())
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_path(tmp)
            _swap_in(tmp, directory)
            _clean_stale(directory)  # a crashed save's old version is obsolete now
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return manifest


def _retire(path: Path, directory: Path) -> None:
    """Move a replaced version aside as ``.NAME.old-*`` and delete it unless a load still reads it."""
    old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(path, old)
    _remove_unpinned(old)


def _swap_in(tmp: Path, directory: Path) -> None:
    if not directory.exists():
        os.rename(tmp, directory)
    elif _exchange(tmp, directory):
        _fsync_path(directory.parent)
        _retire(tmp, directory)  # tmp now holds the old version
    else:
        old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(directory, old)
        os.rename(tmp, directory)
        _fsync_path(directory.parent)
        _remove_unpinned(old)
    _fsync_path(directory.parent)


def _fallback_versions(directory: Path) -> list[Path]:
    """Complete previous versions a save interrupted between its two renames left aside, newest first."""
    olds = []
    for p in directory.parent.glob(f".{directory.name}.old-*"):
        try:
            if (p / MANIFEST_NAME).is_file():
                olds.append((p.stat().st_mtime, p))
        except OSError:  # removed meanwhile
            continue
    return [p for _, p in sorted(olds, reverse=True)]


def find_index_dir(directory: str | Path) -> Path:
    """``directory`` if it holds a manifest, else the previous version a crashed save left aside.

    Only a name: to read the files, pin the version with :func:`open_version`.
    """
    directory = Path(directory).absolute()
    if (directory / MANIFEST_NAME).is_file():
        return directory
    if not directory.exists():
        olds = _fallback_versions(directory)
        if olds:
            log.warning(
                "index %s is missing; a save was interrupted, loading the previous version from %s", directory, olds[0]
            )
            return olds[0]
        raise IndexNotFoundError(f"no index at {str(directory)!r}; build one with VectorIndex.build(...).save(dir)")
    raise IndexNotFoundError(
        f"{str(directory)!r} has no {MANIFEST_NAME}, so it is not a raylens index directory; point at the directory that save() wrote"
    )


def read_manifest(directory: Path) -> IndexManifest:
    """The manifest of an index directory (a name: for a consistent read, use :func:`open_version`)."""
    path = Path(directory) / MANIFEST_NAME
    try:
        return _parse_manifest(path.read_text(), path)
    except FileNotFoundError:
        raise IndexNotFoundError(f"no {MANIFEST_NAME} in {str(directory)!r}") from None


def _parse_manifest(text: str, path: Path) -> IndexManifest:
    try:
        return IndexManifest.from_json(text)
    except (ValueError, TypeError, KeyError) as e:
        raise IndexCorruptError(
            f"{str(path)!r} is not a valid index manifest ({e}); restore it or rebuild the index"
        ) from e


def verify_checksums(directory: Path, manifest: IndexManifest, *, paths: Callable[[str], Path] | None = None) -> None:
    """Raise IndexCorruptError when a file is missing or its sha256 differs from the manifest.

    ``paths(name)`` gives the path to read each file from (default: ``directory / name``); the
    messages always name ``directory``.
    """
    for name, expected in manifest.checksums.items():
        shown = Path(directory) / name
        path = paths(name) if paths else shown
        if not path.is_file():
            raise IndexCorruptError(f"index file {str(shown)!r} is missing; restore the directory or rebuild the index")
        got = sha256_file(path)
        if got != expected:
            raise IndexCorruptError(
                f"index file {str(shown)!r} is corrupt (sha256 {got[:12]}… != manifest {expected[:12]}…); "
                "restore it from a backup or rebuild the index"
            )


@dataclass(frozen=True)
class PinnedVersion:
    """One version of an index directory, held open by :func:`open_version`: its files stay in place
    and belong to this one version until the ``with`` block ends."""

    location: Path
    """The directory's name when it was opened (for messages; it may have been renamed since)."""
    manifest: IndexManifest
    """The version's manifest, read through the pinned descriptor."""
    dir_fd: int
    """The open directory descriptor the version is pinned by."""

    def path(self, name: str) -> Path:
        """A path to file ``name`` of this version that resolves through the pinned descriptor."""
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"index file names are plain names, got {name!r}")
        if _PROC_FD.is_dir():
            return _PROC_FD / str(self.dir_fd) / name
        return self.location / name  # no /proc (e.g. macOS): by name, see the module docstring

    def exists(self, name: str) -> bool:
        """Whether file ``name`` is in this version."""
        try:
            os.stat(name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return False
        return True

    def verify(self) -> None:
        """Check every file against the manifest's sha256 (IndexCorruptError)."""
        verify_checksums(self.location, self.manifest, paths=self.path)


def _read_pinned_manifest(fd: int, location: Path) -> IndexManifest | None:
    """The manifest read through ``fd``; None when the directory was removed under us (retry)."""
    try:
        mfd = os.open(MANIFEST_NAME, os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd)
    except FileNotFoundError:
        if os.fstat(fd).st_nlink == 0:  # a save retired and removed this version: start again
            return None
        raise IndexNotFoundError(
            f"{str(location)!r} has no {MANIFEST_NAME}, so it is not a raylens index directory; point at the "
            "directory that save() wrote"
        ) from None
    with os.fdopen(mfd, "r", encoding="utf-8") as f:
        text = f.read()
    return _parse_manifest(text, location / MANIFEST_NAME)


@contextlib.contextmanager
def open_version(directory: str | Path) -> Iterator[PinnedVersion]:
    """Pin the current version of an index directory for reading (see the module docstring).

    >>> import numpy as np
    >>> from raylens.index import VectorIndex
    >>> d = VectorIndex.build(np.eye(4, dtype="float32"), model="clip-tiny").save("runs/pinned/index")
    >>> with open_version(d) as v:
    ...     VectorIndex.build(np.eye(4, dtype="float32")[:2], model="clip-tiny").save(d)  # doctest: +ELLIPSIS
    ...     v.manifest.count, v.exists("index.faiss")                 # still the version we pinned
    PosixPath(...)
    (4, True)
    """
    directory = Path(directory).absolute()
    for _ in range(_OPEN_RETRIES):
        location = find_index_dir(directory)
        try:
            fd = os.open(location, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # a save moved or removed it between the lookup and the open: look again
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a save removes this very version
            manifest = _read_pinned_manifest(fd, location)
            if manifest is None:
                continue
            yield PinnedVersion(location, manifest, fd)
            return
        finally:
            os.close(fd)  # closing the descriptor releases the lock
    raise IndexCorruptError(
        f"index {str(directory)!r} changed {_OPEN_RETRIES} times while it was being opened; "
        "is a process saving it in a tight loop?"
    )
