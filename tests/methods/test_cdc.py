"""CDC end to end on digits, TF/torch parity of its scores and cuts, and its input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compress_core.data import config
from compress_core.ir import checkpoint, flops, zoo
from compress_core.recipes import cdc
from methods import cdc_distill, cdc_prune, common, kernel_widths
from tests.conftest import close, trained_like

CONFIG = f"{common.HYPERPARAMS}/cdc_resnet20_digits.py"
# the README's main job, shrunk: one epoch per stage, big batches
TINY = ["--config.train.epochs=2", "--config.finetune.epochs=1", "--config.distill.epochs=1",
        "--config.train.batch_size=256", "--config.finetune.batch_size=256", "--config.distill.batch_size=256",
        "--config.distill.dca_refit_every=1"]


@pytest.fixture(scope="module")
def digits_ctx():
    cfg = config.load_config(CONFIG)
    return cfg, common.load_data(cfg)


def _ctx(cfg, splits, backend, tmp_path):
    return common.Context(cfg, backend, str(tmp_path), splits)


@pytest.mark.parity
@pytest.mark.parametrize("bn_mode", ["inference", "batch"])
def test_tf_and_torch_give_the_same_scores_cuts_and_pruned_logits(digits_ctx, backends, tmp_path, bn_mode):
    cfg, splits = digits_ctx
    cfg = config.load_config(CONFIG, [f"cdc.bn_mode={bn_mode}"])
    g = zoo.build("resnet20", 10, (1, 8, 8))
    params = trained_like(g, seed=7)
    points = cdc.mask_points(g)
    groups = np.array([0, 1, 2, 2, 0, 3, 2, 0, 1, 3])
    out = {}
    for name, b in backends.items():
        model = b.build(g, params)
        scores = cdc_prune.score_channels(_ctx(cfg, splits, b, tmp_path), model, points, groups)
        keeps = cdc.select_top(points, scores, cdc.uniform_counts(points, 0.45))
        small, sp = cdc.apply(g, b.get_weights(model), points, keeps)
        out[name] = (scores, keeps, small, sp)
    for s_torch, s_tf in zip(out["torch"][0], out["tf"][0]):
        # relative to the layer's score scale: GSD is ~0 for an uninformative channel
        assert close(s_torch, s_tf) < 1e-4 or np.max(np.abs(s_tf - s_torch)) < 1e-4 * np.max(np.abs(s_torch))
    assert all(np.array_equal(a, b) for a, b in zip(out["torch"][1], out["tf"][1]))
    # the pruned checkpoint written from one backend gives the same logits in the other
    path = str(tmp_path / "pruned.safetensors")
    checkpoint.save_checkpoint(path, out["torch"][2], out["torch"][3])
    g2, p2, _ = checkpoint.load_checkpoint(path)
    x = splits.test.x[:16]
    logits = {n: b.forward(b.build(g2, p2), x)[0] for n, b in backends.items()}
    assert close(logits["torch"], logits["tf"]) < 1e-4


def test_scoring_pass_equals_exact_class_statistics_whatever_the_merge_interval(digits_ctx, backend, tmp_path,
                                                                               monkeypatch):
    from compress_core import data
    from compress_core.criteria.discriminant import ClassStats

    cfg, splits = digits_ctx
    g = zoo.build("resnet20", 10, (1, 8, 8))
    model = backend.build(g, trained_like(g, seed=3))
    points = cdc.mask_points(g)
    groups = np.array([0, 1, 2, 2, 0, 3, 2, 0, 1, 3])
    ctx = _ctx(cfg, splits, backend, tmp_path)
    buffered = cdc_prune.score_channels(ctx, model, points, groups)  # the whole split in one merge
    monkeypatch.setattr(cdc_prune, "_MERGE_VALUES", 1)  # a merge after every batch
    each = cdc_prune.score_channels(ctx, model, points, groups)
    # exact reference: float64 two-pass statistics of the full feature maps
    taps = sorted({p.tap for p in points})
    exact = {(t, lvl): ClassStats(4 if lvl else 10, g.shapes()[t][0]) for t in taps for lvl in (0, 1)}
    batches = data.iterate_batches(splits.train, cfg.cdc.score_batch_size, False)
    for acts, y in backend.stream(model, batches, taps):
        for (t, lvl), st in exact.items():
            st.update(acts[t], groups[y] if lvl else y)
    for p, a, b in zip(points, buffered, each):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        want = exact[(p.tap, int(p.block <= cfg.cdc.block_threshold))].scores("gsd")
        assert close(want, a) < 1e-5 or np.max(np.abs(want - a)) < 1e-5 * np.max(np.abs(want))


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_cdc_prune_end_to_end_and_resume(backend, tmp_path, capsys):
    argv = ["--backend", backend, "--workdir", str(tmp_path / "w"), *TINY]
    assert cdc_prune.cli(argv) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "distilled" in out and "kept input channels" in out
    m = json.loads((tmp_path / "w" / "metrics.json").read_text())
    base, pruned = m["rows"][0], m["rows"][1]
    # "about half the MACs", from below: the default plan cuts the streams, widths rounded to the multiple
    # measured on the backend (44.7% at 8, 46.5% at 16)
    assert 0.4 < pruned["macs"] / base["macs"] <= 0.5
    measured = kernel_widths.measured_multiple(backend)  # measured once per process: the job's value
    assert f"(widths multiples of {measured}, measured: --config.cdc.multiple={measured} repeats it)" in (
        tmp_path / "w" / "log.txt").read_text()
    assert [r["model"] for r in m["rows"]] == ["baseline", "pruned, not fine-tuned", "fine-tuned", "distilled"]
    # every width a multiple of the measured one (16: stage 1's 16-wide masks stay whole), the net cut
    assert all(r["after"] % measured == 0 and r["after"] <= r["before"] for r in m["layers"])
    assert sum(r["after"] for r in m["layers"]) < sum(r["before"] for r in m["layers"])
    assert (tmp_path / "w" / "widths.png").read_bytes()[:4] == b"\x89PNG"
    g, _, _ = checkpoint.load_checkpoint(m["checkpoint"])
    assert flops.count_macs(g) == pruned["macs"]
    # a rerun finds every stage done: no new training, the same cut
    assert cdc_prune.cli(argv) == 0
    again = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert again["layers"] == m["layers"]
    assert "scoring skipped" in (tmp_path / "w" / "log.txt").read_text()


@pytest.mark.parametrize("backend,runtime", [("torch", "backend"), ("tf", "backend"), ("torch", "ort")])
def test_cdc_latency_plan_times_widths_on_the_runtime_and_meets_the_target(backend, runtime, tmp_path):
    g = zoo.build("resnet20", 10, (1, 8, 8))
    teacher = tmp_path / "t.safetensors"
    checkpoint.save_checkpoint(str(teacher), g, trained_like(g))
    argv = ["--backend", backend, "--workdir", str(tmp_path / "w"), f"--config.model.weights={teacher}",
            "--config.cdc.plan=latency", f"--config.cdc.latency_runtime={runtime}", "--config.cdc.latency_batch=8",
            "--config.cdc.latency_repeats=1", "--config.finetune.epochs=1", "--config.distill.enabled=False"]
    assert cdc_prune.cli(argv) == 0
    log = (tmp_path / "w" / "log.txt").read_text()
    timed_on = backend if runtime == "backend" else "ort"
    assert f"latency plan on {timed_on} at batch 8" in log
    m = json.loads((tmp_path / "w" / "metrics.json").read_text())
    small, _, _ = checkpoint.load_checkpoint(str(tmp_path / "w" / "pruned.safetensors"))
    assert flops.count_macs(small) == m["rows"][1]["macs"] <= 0.5 * flops.count_macs(g)
    # the widths are one of each tier's options: multiples of 8, at least a quarter of the width
    points = cdc.mask_points(g)
    saved = np.load(tmp_path / "w" / "scores.npz")
    kept = [len(saved[f"keep_{i}"]) for i in range(len(points))]
    assert all(k % 8 == 0 and p.width // 4 <= k <= p.width for k, p in zip(kept, points))


@pytest.mark.parametrize("backend", ["torch", "tf"])
def test_cdc_depth_plan_removes_whole_blocks_keeps_the_dca_tap_and_repeats_as_predefined(backend, tmp_path):
    import re

    g = zoo.build("resnet20", 10, (1, 8, 8))
    teacher = tmp_path / "t.safetensors"
    checkpoint.save_checkpoint(str(teacher), g, trained_like(g))
    common_args = ["--backend", backend, f"--config.model.weights={teacher}", "--config.finetune.epochs=1",
                   "--config.finetune.batch_size=256", "--config.distill.epochs=1", "--config.distill.batch_size=256"]
    assert cdc_prune.cli([*common_args, "--workdir", str(tmp_path / "w"), "--config.cdc.plan=depth"]) == 0
    log = (tmp_path / "w" / "log.txt").read_text()
    m = json.loads((tmp_path / "w" / "metrics.json").read_text())
    small, _, _ = checkpoint.load_checkpoint(str(tmp_path / "w" / "pruned.safetensors"))
    assert flops.count_macs(small) == m["rows"][1]["macs"] <= 0.5 * flops.count_macs(g)
    # whole blocks: every mask keeps all its channels or none, and the block of the DCA tap stays
    assert all(r["after"] in (0, r["before"]) for r in m["layers"]) and any(r["after"] == 0 for r in m["layers"])
    removed = re.search(r"depth plan: (\d+) residual blocks removed \(([^)]*)\)", log)
    adds = removed.group(2).split(", ")
    assert int(removed.group(1)) == len(adds) >= 3 and "layer2.2.add" not in adds
    assert "layer2.2.relu1" in small and not [a for a in adds if a in small]
    assert m["rows"][-1]["model"] == "distilled"
    # the logged widths repeat the cut as a predefined plan
    widths = re.search(r"--config.cdc.widths=\(([^)]*)\)", log).group(1)
    assert cdc_prune.cli([*common_args, "--workdir", str(tmp_path / "p"), "--config.cdc.plan=predefined",
                          f"--config.cdc.widths=({widths})", "--config.distill.enabled=False"]) == 0
    again, _, _ = checkpoint.load_checkpoint(str(tmp_path / "p" / "pruned.safetensors"))
    assert [n.name for n in again.nodes] == [n.name for n in small.nodes]


def _widths(zero=()):
    """A predefined plan for the digits ResNet-20 keeping every channel but those of the masks ``zero``."""
    points = cdc.mask_points(zoo.build("resnet20", 10, (1, 8, 8)))
    return "--config.cdc.widths=(" + ",".join(str(0 if p.conv in zero else p.width) for p in points) + ")"


def test_cdc_distill_command_trains_a_student_against_its_teacher(tmp_path):
    g = zoo.build("resnet20", 10, (1, 8, 8))
    teacher = str(tmp_path / "teacher.safetensors")
    checkpoint.save_checkpoint(teacher, g, trained_like(g))
    points = cdc.mask_points(g)
    small, sp = cdc.apply(g, trained_like(g), points, [np.arange(p.width // 2) for p in points])
    student = str(tmp_path / "student.safetensors")
    checkpoint.save_checkpoint(student, small, sp)
    argv = ["--backend", "torch", "--student", student, "--teacher", teacher, "--workdir", str(tmp_path / "d"),
            "--config.distill.epochs=1", "--config.distill.batch_size=256"]
    assert cdc_distill.cli(argv) == 0
    m = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert m["macs"] == flops.count_macs(small)
    hist = json.loads((tmp_path / "d" / "distill" / "state.json").read_text())["history"]
    assert {"train_kd", "train_feature", "train_ce"} <= set(hist[0])


BAD = {
    "unknown scorer": (["--config.cdc.scorer=kl"], "cdc.scorer"),
    "ratio outside [0, 1)": (["--config.cdc.ratio=1.0"], "cdc.ratio"),
    "threshold past the last block": (["--config.cdc.block_threshold=9"], "past the last block"),
    "coarse labels outside the range": ([lambda t: f"--config.cdc.coarse_labels={_file(t, '0 1 -1 2 0 1 2 0 1 2')}"],
                                        "non-negative"),
    "coarse-label file of the wrong length": ([lambda t: f"--config.cdc.coarse_labels={_file(t, '0 1 2')}"],
                                              "3 entries"),
    "predefined plan of the wrong length": (["--config.cdc.plan=predefined", "--config.cdc.widths=(4,4)"],
                                            "2 widths"),
    "unknown latency runtime": (["--config.cdc.plan=latency", "--config.cdc.latency_runtime=gpu"],
                                "cdc.latency_runtime"),
    "depth plan out of reach": (["--config.cdc.plan=depth", "--config.cdc.mac_target=0.1"],
                                "removing every removable block"),
    "a zero width outside a removable block": (["--config.cdc.plan=predefined", _widths(["layer2.0.conv2"])],
                                               "'layer2.0.conv2' cannot keep 0 channels"),
    "a block removed in part": (["--config.cdc.plan=predefined", _widths(["layer1.1.conv2"])], "removed in part"),
    "the DCA tap's block removed": (["--config.cdc.plan=predefined", _widths(["layer2.2.conv1", "layer2.2.conv2"])],
                                    "holds distill.dca_tap"),
    # below what one channel per mask keeps (0.2%): out of reach at any width, a measured multiple halved to 1
    "MAC target out of reach": (["--config.cdc.plan=macs", "--config.cdc.mac_target=0.001"], "cannot be reached"),
}


def _file(tmp_path, text):
    p = tmp_path / "coarse.txt"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("case", sorted(BAD))
def test_cdc_bad_input_is_one_line_exit_2(case, tmp_path, capsys):
    args, needle = BAD[case]
    args = [a(tmp_path) if callable(a) else a for a in args]
    teacher = tmp_path / "t.safetensors"
    g = zoo.build("resnet20", 10, (1, 8, 8))
    checkpoint.save_checkpoint(str(teacher), g, trained_like(g))
    argv = ["--backend", "torch", "--workdir", str(tmp_path / "w"), f"--config.model.weights={teacher}", *args]
    assert cdc_prune.cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and needle in err[-1], err


def test_an_unreachable_mac_target_fails_before_the_baseline_is_trained(tmp_path, capsys):
    # widths of at least 8 keep about a quarter of the MACs (a measured multiple would be halved to reach it)
    argv = ["--backend", "torch", "--workdir", str(tmp_path / "w"), "--config.cdc.mac_target=0.02",
            "--config.cdc.multiple=8"]
    assert cdc_prune.cli(argv) == 2
    assert "cannot be reached" in capsys.readouterr().err
    assert not (tmp_path / "w" / "baseline").exists()
