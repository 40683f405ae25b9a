"""One index = one directory, written atomically and verified on load.

Save writes every file into a temporary directory beside the target, fsyncs them, then swaps it in
(``renameat2(RENAME_EXCHANGE)`` on Linux: one atomic step; elsewhere two renames, with the old
version kept as ``.NAME.old-*`` until the new one is in place, which ``load`` falls back to).
A crash at any point leaves either the old or the new version loadable.
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
from pathlib import Path

from raylens.index.errors import IndexCorruptError, IndexNotFoundError
from raylens.index.manifest import MANIFEST_NAME, IndexManifest

__all__ = ["sha256_file", "write_directory", "find_index_dir", "read_manifest", "verify_checksums"]

log = logging.getLogger(__name__)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


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


def _clean_stale(directory: Path) -> None:
    """Remove temp/old directories left by crashed saves (their writer process is gone)."""
    for p in directory.parent.glob(f".{directory.name}.tmp-*"):
        try:
            pid = int(p.name.rsplit(".tmp-", 1)[1].split("-", 1)[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
    if (directory / MANIFEST_NAME).is_file():
        for p in directory.parent.glob(f".{directory.name}.old-*"):
            shutil.rmtree(p, ignore_errors=True)


def write_directory(directory: Path, write_files: Callable[[Path], IndexManifest]) -> IndexManifest:
    """Write an index directory atomically.

    ``write_files(tmp)`` writes the data files into ``tmp`` and returns the manifest (without
    checksums); this function fsyncs them, adds the checksums, writes the manifest last, and swaps
    ``tmp`` into place. The previous version stays loadable until the swap.
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


def _swap_in(tmp: Path, directory: Path) -> None:
    if not directory.exists():
        os.rename(tmp, directory)
    elif _exchange(tmp, directory):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old version
    else:
        old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(directory, old)
        os.rename(tmp, directory)
        _fsync_path(directory.parent)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_path(directory.parent)


def find_index_dir(directory: str | Path) -> Path:
    """``directory`` if it holds a manifest, else the previous version a crashed save left aside."""
    directory = Path(directory).absolute()
    if (directory / MANIFEST_NAME).is_file():
        return directory
    if not directory.exists():
        olds = sorted(directory.parent.glob(f".{directory.name}.old-*"), key=lambda p: p.stat().st_mtime)
        olds = [p for p in olds if (p / MANIFEST_NAME).is_file()]
        if olds:
            log.warning(
                "index %s is missing; a save was interrupted, loading the previous version from %s", directory, olds[-1]
            )
            return olds[-1]
        raise IndexNotFoundError(f"no index at {str(directory)!r}; build one with VectorIndex.build(...).save(dir)")
    raise IndexNotFoundError(
        f"{str(directory)!r} has no {MANIFEST_NAME}, so it is not a raylens index directory; point at the directory that save() wrote"
    )


def read_manifest(directory: Path) -> IndexManifest:
    path = Path(directory) / MANIFEST_NAME
    try:
        return IndexManifest.from_json(path.read_text())
    except FileNotFoundError:
        raise IndexNotFoundError(f"no {MANIFEST_NAME} in {str(directory)!r}") from None
    except (ValueError, TypeError, KeyError) as e:
        raise IndexCorruptError(
            f"{str(path)!r} is not a valid index manifest ({e}); restore it or rebuild the index"
        ) from e


def verify_checksums(directory: Path, manifest: IndexManifest) -> None:
    """Raise IndexCorruptError when a file is missing or its sha256 differs from the manifest."""
    for name, expected in manifest.checksums.items():
        path = Path(directory) / name
        if not path.is_file():
            raise IndexCorruptError(f"index file {str(path)!r} is missing; restore the directory or rebuild the index")
        got = sha256_file(path)
        if got != expected:
            raise IndexCorruptError(
                f"index file {str(path)!r} is corrupt (sha256 {got[:12]}… != manifest {expected[:12]}…); "
                "restore it from a backup or rebuild the index"
            )
