"""Write a file so that a reader sees the old content or the new, never a mixture.

Everything the project writes (adapters, checkpoints, embeddings, the sweep's results, the
report, metrics and grids) goes through :func:`atomic_path`: the new content is written to a
hidden temporary file in the same folder, flushed to the disk (``fsync``), given the mode a
plain ``open(path, "w")`` would have (0666 minus the umask, e.g. 0644 under umask 022), and
renamed over ``path`` (``os.replace``, atomic on POSIX). A full disk or a killed writer leaves the
previous file as it was; a failed write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """A fresh hidden name beside ``path``: ``.<name>.<random>.tmp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def output_problem(path: str | os.PathLike) -> str | None:
    """Why a file cannot be written at ``path``, or None: checked before the work that
    produces it. Its nearest existing folder must be a folder where a file can be created (a
    hidden probe is created and removed: root may write where the mode bits say no)."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder; give a file name"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot create {path.parent}: {folder} is not a folder"
    probe = temp_path(folder / path.name)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        return f"cannot write in {folder}: {err.strerror or err}"
    probe.unlink(missing_ok=True)
    return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; it replaces ``path`` when the
    block ends without an exception, and is removed otherwise.

    An ``OSError`` (ENOSPC, EACCES ...) is raised again, with its errno, naming ``path`` and
    saying that the previous file, if any, is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        # Created here with 0666 so that the umask alone decides the mode, as for any output.
        # Libraries that write to a temporary file of their own and rename it (safetensors'
        # save_file, which gets 0600 from it) are given that mode back before the rename.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        mode = os.fstat(fd).st_mode & 0o7777
        os.close(fd)
        yield tmp
        _commit(tmp, path, mode)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        reason = f"{err.strerror or err}: cannot write {path} (any previous file is unchanged)"
        raise OSError(err.errno, reason) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _commit(tmp: Path, path: Path, mode: int) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        if os.fstat(fd).st_mode & 0o7777 != mode:
            os.fchmod(fd, mode)
        os.fsync(fd)  # the data is on the disk before the name points at it
    finally:
        os.close(fd)
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # not every file system lets a folder be fsync'ed
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see the module docstring)."""
    return write_bytes(path, text.encode(encoding))
