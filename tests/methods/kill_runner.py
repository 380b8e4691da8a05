"""Run a method's CLI and SIGKILL the process at a chosen file operation of a chosen epoch.

``python -m tests.methods.kill_runner EPOCH POSITION COUNT_FILE -- <method> <args...>``:
the file operations that make something visible on disk (``os.replace``, ``os.rename``,
``os.link``, ``shutil.rmtree``) are counted from the moment the set of epoch ``EPOCH``
is begun (:meth:`compress_core.fileio.Snapshots.begin`); just before operation number
``POSITION`` (1-based) the process kills itself with SIGKILL, as a crash or ``kill -9``
would, running no cleanup. The number of operations counted for the epoch is written
to ``COUNT_FILE`` when the next epoch begins (or at exit), so a test learns the positions.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import sys


def main(argv: list[str]) -> int:
    epoch, position, count_file = int(argv[0]), int(argv[1]), argv[2]
    method, args = argv[4], argv[5:]
    from compress_core import fileio

    counter = {"on": False, "n": 0}

    def record():
        with open(count_file, "w") as f:
            f.write(str(counter["n"]))

    def counted(fn):
        def wrapper(*a, **k):
            if counter["on"]:
                counter["n"] += 1
                if counter["n"] == position:
                    os.kill(os.getpid(), signal.SIGKILL)
            return fn(*a, **k)
        return wrapper

    begin = fileio.Snapshots.begin

    def begin_and_count(self, number):
        if counter["on"]:
            counter["on"] = False
            record()
        path = begin(self, number)
        counter["on"] = counter["on"] or number == epoch
        return path

    fileio.Snapshots.begin = begin_and_count
    for module, name in ((os, "replace"), (os, "rename"), (os, "link"), (shutil, "rmtree")):
        setattr(module, name, counted(getattr(module, name)))
    code = importlib.import_module(f"methods.{method}").cli(args)
    if counter["on"]:
        record()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
