"""Crash-safe files: atomic writes, and sets of files committed as one unit.

A process killed at any instant (SIGKILL, power loss after the OS flushed) leaves
every file either as it was or as it was meant to be, never half written, and a
:class:`Snapshots` folder either at its previous set or at its new one, never a mix.
Written files get the permissions the process's umask gives new files (a temporary
file alone would be private), and JSON is strict (no bare ``NaN``: non-finite floats
are written as ``null``).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; a written result is not
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_dir(path: str, write) -> None:
    """Make the directory ``path`` by ``write(tmp)`` into a hidden temporary directory beside it,
    renamed to ``path`` once complete (a rename never replaces a non-empty directory: a
    ``path`` that appeared meanwhile fails the rename, and the temporary directory is removed)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        write(tmp)
        for root, _, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    os.fsync(f.fileno())
            _fsync_dir(root)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private; a written result is not
        os.rename(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def strict_json(obj):
    """``obj`` with every non-finite float replaced by ``None`` (JSON has no NaN or infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if hasattr(obj, "dtype") and hasattr(obj, "tolist"):  # numpy scalars and arrays
        return strict_json(obj.tolist())
    return obj


def atomic_write_json(path: str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(strict_json(obj), indent=2, sort_keys=True, allow_nan=False)
                              + "\n").encode())


def atomic_write_npz(path: str, **arrays) -> None:
    """``np.savez`` of ``arrays`` to ``path`` (no ``.npz`` appended), written atomically."""
    import io

    import numpy as np
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def link_or_copy(src: str, dst: str) -> None:
    """Make ``dst`` an atomic hard link to ``src`` (a copy where links are not possible)."""
    directory = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(dst))
    os.close(fd)
    os.unlink(tmp)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        # also after a success: renaming onto another link of the same file does nothing
        if os.path.lexists(tmp):
            os.unlink(tmp)


class Snapshots:
    """Numbered sets of files under ``directory``, each committed by one rename.

    A set is written into a hidden folder (:meth:`begin`) and renamed to
    ``<prefix>NNNNNN`` once every file in it is on disk (:meth:`commit`), after which
    the older sets are removed. :meth:`latest` only ever sees complete sets, so a
    resume reads files that belong together. :meth:`publish` mirrors a set's files
    into ``directory`` under their own names (hard links), for people and for code
    that reads ``directory/<name>``; those mirrors are never read to resume.
    """

    def __init__(self, directory: str, prefix: str = "epoch-"):
        self.directory, self.prefix = directory, prefix
        self._pattern = re.compile(re.escape(prefix) + r"(\d{6})")

    def path(self, number: int) -> str:
        return os.path.join(self.directory, f"{self.prefix}{number:06d}")

    def latest(self) -> tuple[int, str] | None:
        """``(number, folder)`` of the newest complete set, or None."""
        if not os.path.isdir(self.directory):
            return None
        found = [int(m.group(1)) for m in map(self._pattern.fullmatch, os.listdir(self.directory)) if m]
        return (max(found), self.path(max(found))) if found else None

    def begin(self, number: int) -> str:
        """An empty hidden folder for set ``number``; what a killed writer left behind (hidden
        folders, ``.tmp-*`` files of :func:`atomic_write_bytes`) is dropped first."""
        os.makedirs(self.directory, exist_ok=True)
        for name in os.listdir(self.directory):
            path = os.path.join(self.directory, name)
            if name.startswith(f".{self.prefix}") and name.endswith(".tmp"):
                shutil.rmtree(path, ignore_errors=True)
            elif name.startswith(".tmp-"):  # an atomic write or mirror that a kill interrupted
                os.unlink(path)
        tmp = os.path.join(self.directory, f".{self.prefix}{number:06d}.tmp")
        os.makedirs(tmp)
        return tmp

    def commit(self, number: int, tmp: str) -> str:
        """Rename the written folder to set ``number``, then remove the older sets; its final path."""
        final = self.path(number)
        _fsync_dir(tmp)
        os.rename(tmp, final)
        _fsync_dir(self.directory)
        for name in os.listdir(self.directory):
            m = self._pattern.fullmatch(name)
            if m and int(m.group(1)) != number:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        return final

    def publish(self, folder: str, names: Iterable[str]) -> None:
        """Mirror ``folder/<name>`` to ``directory/<name>`` for every name that exists there."""
        for name in names:
            src = os.path.join(folder, name)
            if os.path.exists(src):
                link_or_copy(src, os.path.join(self.directory, name))
