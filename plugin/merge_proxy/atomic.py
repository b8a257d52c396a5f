"""Outputs that appear whole or not at all.

A merge, a published expert or a sweep report is written into a hidden sibling directory and renamed
into place only when complete; any failure or interrupt removes the partial directory, so a user never
finds a half-written output that looks finished. A process killed outright (SIGKILL, the OOM killer)
cannot clean up: its staging directory is named after the host and process, and the next output to the
same place removes it once that process is gone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from merge_proxy.errors import ConfigError


def check_new_output_dir(out: Path) -> None:
    """Refuse what cannot become the output, before any download or merge: an existing file or
    non-empty directory (the user's, not ours to replace), a mount point (the output is renamed into
    place), a place this user cannot write."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} is a file; choose another --out or remove it")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"output {out} already exists and is not empty; choose another --out or remove it")
    if out.is_dir() and os.path.ismount(out):
        raise ConfigError(f"output {out} is a mount point, which a finished output cannot be renamed onto; "
                          "choose a directory inside it")
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if existing != out.absolute() and not existing.is_dir():
        raise ConfigError(f"output {out} is under {existing}, which is a file; choose another --out")
    parent = out.absolute().parent if out.exists() else existing
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write output {out}: {parent} is not writable by this user; choose another --out")


@contextlib.contextmanager
def atomic_output_dir(out: str | Path) -> Iterator[Path]:
    """Yield a staging directory that becomes ``out`` on success and vanishes on any failure (with
    the parent directories it had to create)."""
    out = Path(out).absolute()
    check_new_output_dir(out)
    created = [p for p in reversed(out.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(out)
    staging = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(out)}{os.getpid()}-", dir=out.parent))
    try:
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700: the output is for the group too
        yield staging
        if out.exists():
            out.rmdir()  # an empty directory the user created for us
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in reversed(created):
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def _staging_prefix(out: Path) -> str:
    return f".{out.name}.partial-{socket.gethostname()}-"


def _remove_orphans(out: Path) -> None:
    """Staging directories of ``out`` left by processes of this host that no longer run."""
    prefix = _staging_prefix(out)
    for staging in out.parent.glob(f"{glob.escape(prefix)}*"):
        pid = staging.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _umask() -> int:
    """The process's umask: from /proc on Linux (reading it with os.umask means setting it, which other
    threads creating files at that moment would see), else set and put straight back."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace a file's content in one rename, so readers never see a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
