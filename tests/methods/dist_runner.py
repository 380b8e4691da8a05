"""Run methods one after the other in the processes of one data-parallel launch, optionally killing a rank.

``torchrun ... -m tests.methods.dist_runner [--kill RANK:EPOCH] <method> <args...> [:: <method> <args...>]``:
each method's CLI runs in turn in the same processes (they join the run once, saving a launch);
with ``--kill``, rank ``RANK`` kills itself with SIGKILL (no cleanup, as a crash or ``kill -9``)
when a training stage reaches epoch ``EPOCH`` (0-based), and the launcher ends the others.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys


def main(argv: list[str]) -> int:
    from methods import common, distributed

    if argv[0] == "--kill":
        rank, epoch = (int(v) for v in argv[1].split(":"))
        argv = argv[2:]
        learning_rate = common.learning_rate

        def killing(e, *a, **k):
            if e == epoch and distributed.rank() == rank:
                os.kill(os.getpid(), signal.SIGKILL)
            return learning_rate(e, *a, **k)

        common.learning_rate = killing
    calls, current = [], []
    for a in argv + ["::"]:
        if a == "::":
            calls.append(current)
            current = []
        else:
            current.append(a)
    for method, *args in calls:
        code = importlib.import_module(f"methods.{method}").cli(args)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
