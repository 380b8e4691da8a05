"""``fileio.atomic_write_dir`` and ``atomic_write_npz``: a directory or an array file appears complete, with the
umask's permissions, or not at all."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from compress_core import fileio
from compress_core.fileio import atomic_write_dir


def _write(files):
    def write(tmp):
        os.makedirs(os.path.join(tmp, "sub"))
        for name in files:
            with open(os.path.join(tmp, name), "w") as f:
                f.write(name)
    return write


def test_complete_directory_or_nothing(tmp_path):
    target = tmp_path / "model"
    atomic_write_dir(str(target), _write(["a", "sub/b"]))
    assert (target / "sub" / "b").read_text() == "sub/b" and sorted(os.listdir(tmp_path)) == ["model"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~mask  # not mkdtemp's private 0o700

    def fails(tmp):
        _write(["a"])(tmp)
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        atomic_write_dir(str(tmp_path / "other"), fails)
    # an existing non-empty directory is never replaced
    with pytest.raises(OSError):
        atomic_write_dir(str(target), _write(["c"]))
    assert sorted(os.listdir(tmp_path)) == ["model"] and sorted(os.listdir(target)) == ["a", "sub"]


def test_npz_written_whole_or_not_at_all(tmp_path, monkeypatch):
    p = tmp_path / "scores.npz"
    fileio.atomic_write_npz(str(p), keep_0=np.array([3, 1]), score_0=np.arange(4.0))
    with np.load(p) as z:
        assert z["keep_0"].tolist() == [3, 1] and z["score_0"].tolist() == [0.0, 1.0, 2.0, 3.0]
    before = p.read_bytes()

    class Half:  # the process dies half-way through writing the new file
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise KeyboardInterrupt

    real_fdopen = fileio.os.fdopen
    monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode: Half(real_fdopen(fd, mode)))
    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write_npz(str(p), keep_0=np.zeros(1000))
    assert p.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["scores.npz"]
