"""The TensorFlow backend on every CPU: its suites again with oneDNN in the other state.

TensorFlow enables oneDNN by default only on some CPUs (``TF_ENABLE_ONEDNN_OPTS``
decides at import time, once per process), and some kernels exist only with it
(dilated and grouped convolution gradients, depthwise convolutions with unequal
strides). This process runs the suites in whatever state the CPU gives; this test
runs the TF cases of the backend suites in a fresh process with the state flipped,
so both states are tested whatever CPU CI happens to have.
"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITES = ["tests/backends/test_contract.py", "tests/backends/test_decompose_layers.py",
          "tests/backends/test_hinge_layers.py", "tests/backends/test_fused_conv.py",
          "tests/backends/test_batchnorm_statistics.py"]
_STATE = "from tensorflow.python.util import _pywrap_util_port as p; print(int(p.IsMklEnabled()))"


def _onednn_state(env) -> int:
    out = subprocess.run([sys.executable, "-c", _STATE], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1])


def test_tf_suites_pass_with_onednn_in_the_other_state():
    here = _onednn_state(dict(os.environ))
    flipped = 1 - here
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=str(flipped))
    # the variable must really flip the state, or this test would run the same state twice
    assert _onednn_state(env) == flipped, (
        f"TF_ENABLE_ONEDNN_OPTS={flipped} did not {'enable' if flipped else 'disable'} oneDNN on this CPU")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not torch",
                          *SUITES], check=False, env=env, cwd=ROOT, capture_output=True, text=True)
    tail = "\n".join(run.stdout.splitlines()[-25:])
    assert run.returncode == 0, f"with oneDNN {'on' if flipped else 'off'}:\n{tail}"
    assert " passed" in tail and " skipped" not in tail, tail
