"""``fileio.atomic_write_dir``: a directory appears complete, with the umask's permissions, or not at all."""

from __future__ import annotations

import os
import stat

import pytest

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
