"""The width multiple measured on the machine (``cdc.multiple=0``, the default): which step the times show, the
fallback when a net is too narrow for it, and the measurement itself; the ONNX Runtime sessions it and the
benchmarks time in turns."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from compress_core.errors import UserError
from compress_core.ir import zoo
from compress_core.ir.init import init_params
from compress_core.recipes import cdc
from methods import cdc_distill, kernel_widths
from tests.conftest import close


def _times(cost):
    return {w: cost(w) for w in kernel_widths.widths_timed()}


def _step(m):
    return lambda w: m * math.ceil(w / m)


@pytest.mark.parametrize("cost,expected", [
    (_step(16), 16),                             # AVX-512: a 24-wide conv costs a 32-wide one
    (_step(32), 32),
    (lambda w: _step(16)(w) ** 2, 16),          # stepped at 16 and quadratic in between steps
    (lambda w: w * w, 8),                       # proportional to the MACs: no step, the fallback
    (lambda w: w, 8),                           # proportional to the width (memory-bound): no step
    (lambda w: _step(8)(w) ** 2, 8),            # AVX2
])
def test_the_widest_step_the_times_show(cost, expected):
    assert kernel_widths.pick_multiple(_times(cost))[0] == expected


def test_a_share_is_the_half_way_width_over_the_next_multiple():
    _, shares = kernel_widths.pick_multiple(_times(lambda w: w))
    assert shares == pytest.approx({32: (48 / 64 + 80 / 96) / 2, 16: (24 / 32 + 40 / 48) / 2})


def _ctx(multiple, plan="macs", target=0.5):
    cfg = SimpleNamespace(cdc=SimpleNamespace(multiple=multiple, plan=plan, mac_target=target, min_width=1,
                                              stream="group", latency_runtime="backend"))
    return SimpleNamespace(cfg=cfg, backend=SimpleNamespace(name="torch"))


def test_a_measured_multiple_too_wide_for_the_net_is_halved_until_the_target_is_reached(monkeypatch):
    g = zoo.build("resnet20", 10, (1, 8, 8))
    points = cdc.mask_points(g)
    monkeypatch.setattr(kernel_widths, "measured_multiple", lambda runtime, backend=None, log=None: 16)
    assert cdc_distill.plan_multiple(_ctx(0), g, points) == 16  # half the MACs: 16 reaches it
    # a tenth of the MACs: widths of at least 8 keep about a quarter, so 16 and 8 are halved away
    m = cdc_distill.plan_multiple(_ctx(0, target=0.1), g, points)
    cdc.ratio_for_macs(g, points, 0.1, 1, m, "group")
    with pytest.raises(UserError):
        cdc.ratio_for_macs(g, points, 0.1, 1, 2 * m, "group")
    assert cdc_distill.plan_multiple(_ctx(5), g, points) == 5  # a multiple given is used as it is


def test_measured_once_per_runtime_and_logged(monkeypatch):
    monkeypatch.setattr(kernel_widths, "_MEASURED", {})
    calls, lines = [], []

    def conv_ms(runtime, widths, **kw):
        calls.append(runtime)
        return [float(_step(16)(w)) for w in widths]

    class Log:  # not caplog: the job logger stops propagating once a job in the same process set it up
        def info(self, msg, *args):
            lines.append(msg % args)

    monkeypatch.setattr(kernel_widths, "conv_ms", conv_ms)
    assert kernel_widths.measured_multiple("torch", log=Log()) == 16
    assert kernel_widths.measured_multiple("torch", log=Log()) == 16 and calls == ["torch"]
    assert len(lines) == 1 and lines[0].startswith("width multiple measured on torch: 16")


@pytest.mark.parametrize("runtime", ["torch", "tf"])
def test_the_measurement_runs_on_each_backend(runtime, monkeypatch):
    monkeypatch.setattr(kernel_widths, "_MEASURED", {})
    assert kernel_widths.measured_multiple(runtime) in (*kernel_widths.CANDIDATES, kernel_widths.FALLBACK)
    widths = kernel_widths.widths_timed()
    ms = kernel_widths.conv_ms(runtime, widths[:2], repeats=1)
    assert len(ms) == 2 and all(t > 0 for t in ms)


def test_onnx_runtime_sessions_timed_in_turns_do_not_spin_and_compute_the_network():
    import onnxruntime as ort  # noqa: F401 - the test needs it

    from methods.report import forward_calls, ort_sessions
    nets = [(g, init_params(g, 0)) for g in (kernel_widths.one_conv(8, 6), kernel_widths.one_conv(16, 6))]
    for spinning in (False, True):
        sessions = ort_sessions(nets, threads=1, spinning=spinning)
        opts = [s.get_session_options() for s in sessions]
        assert {o.get_session_config_entry("session.intra_op.allow_spinning") for o in opts} == {str(int(spinning))}
        assert {o.intra_op_num_threads for o in opts} == {1}
    from backends.base import get_backend
    b = get_backend("torch")
    x = np.random.default_rng(0).normal(size=(2, 16, 6, 6)).astype(np.float32)
    got = forward_calls("ort", nets[1:])[0](x)[0]
    assert close(got, b.forward(b.build(*nets[1]), x)[0]) < 1e-4
