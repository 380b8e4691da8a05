"""Low-rank decomposition: ``python -m methods.decompose --backend tf|torch [--config hyperparams/decompose_*.py]``.

Tucker-2 (Kim et al. 2016, default) or CP (Lebedev et al. 2015) of the
convolutions of a trained network with EVBMF ranks, truncated SVD or a
diagonal structure for its dense layers, a latency guard that keeps a
factorisation only where it is faster on this machine, then fine-tuning.

Work directory: ``baseline/`` (when ``model.weights`` is empty), ``decomposed.safetensors`` and
``layers.json`` (the decomposed network before fine-tuning and the decision for every
layer), ``finetune/``, ``final.safetensors``, ``metrics.json``, ``log.txt``. A rerun resumes.
"""

from __future__ import annotations

import json
import os
import sys

from compress_core.fileio import atomic_write_json
from compress_core.ir import checkpoint, flops
from compress_core.recipes import decompose
from methods import common, distributed, report


def candidates(graph, d) -> list[str]:
    """Layers to try, in graph order: ``layers`` (or every conv, plus dense layers when ``fc`` is on) minus ``skip``."""
    ops = ("conv", "dense") if d.fc != "none" else ("conv",)
    names = list(d.layers) or [n.name for n in graph.of_op(*ops)]
    return [n for n in names if n not in d.skip and graph[n].op in ops]


def replacement(graph, params, name: str, d, fc_kind: str | None = None) -> decompose.Replacement:
    """The factorised sequence of one layer by the config (ranks from ``d.ranks`` or VBMF)."""
    given = {e[0]: tuple(e[1:]) for e in d.ranks}
    ranks = given.get(name)
    if ranks is not None and min(ranks) == 0:
        raise decompose.Skip(f"rank 0 given in decompose.ranks {ranks}")
    kind = fc_kind or d.fc
    if graph[name].op == "dense" and kind == "diagonal":
        return decompose.diagonal_dense(graph, params, name)
    if graph[name].op == "dense":
        return decompose.svd_dense(graph, params, name, ranks[0] if ranks else None, d.weakening)
    if d.method == "tucker2":
        return decompose.tucker2_conv(graph, params, name, ranks, d.weakening, n_iter_max=d.tucker_iters)
    return decompose.cp_conv(graph, params, name, ranks[0] if ranks else None, rule=d.cp_rule,
                             weakening=d.weakening, n_iter_max=d.cp_iters)


def guard(ctx: common.Context, graph, rep) -> tuple[float, float]:
    """Median CPU time (ms) of the original layer and of its factorised sequence, as one-layer graphs."""
    d = ctx.cfg.decompose
    models = [ctx.backend.build(probe) for probe in decompose.probe_graphs(graph, rep)]
    dense, factorised = report.interleaved_ms(ctx.backend, models, d.latency_batch, d.latency_repeats)
    return dense, factorised


def plan(ctx: common.Context, graph, params, names, fc_kind: str | None = None):
    """Decide every candidate: replacements kept and one record per layer (kept or why not)."""
    d = ctx.cfg.decompose
    reps, records = [], []
    for name in names:
        rec = {"layer": name, "op": graph[name].op, "kept": False}
        try:
            rep = replacement(graph, params, name, d, fc_kind)
            rec.update(kind=rep.kind, **rep.info, **decompose.check_saves(graph, rep))
            if d.latency_guard and rep.kind != "diagonal":  # the diagonal is chosen for its parameters
                rec["ms_dense"], rec["ms_factorised"] = guard(ctx, graph, rep)
                if rec["ms_factorised"] >= (1.0 - d.latency_margin) * rec["ms_dense"]:
                    raise decompose.Skip(f"slower on this machine ({rec['ms_factorised']:.3f} ms vs "
                                         f"{rec['ms_dense']:.3f} ms dense)")
            rec["kept"] = True
            reps.append(rep)
            common.log.info("%s: %s %s, rel. error %.3f, MACs %d -> %d", name, rep.kind,
                            rep.info.get("ranks", rep.info.get("rank", "")), rep.info["error"],
                            rec["macs_before"], rec["macs_after"])
        except decompose.Skip as e:
            rec["reason"] = str(e)
            common.log.info("%s: left alone: %s", name, e)
        records.append(rec)
    return reps, records


def decompose_model(ctx: common.Context, teacher):
    """The decomposed network before fine-tuning; resumes from ``decomposed.safetensors``."""
    path, rec_path = ctx.path("decomposed.safetensors"), ctx.path("layers.json")
    if distributed.agree(os.path.exists(path) and os.path.exists(rec_path)):
        common.log.info("decomposed network found in %s: decomposition skipped", path)
        with open(rec_path) as f:
            return common.load_model(ctx.backend, path), json.load(f)
    graph, params = teacher.graph, ctx.backend.get_weights(teacher)
    names = candidates(graph, ctx.cfg.decompose)
    if ctx.cfg.decompose.fc == "diagonal":  # dense layers are made diagonal after the regularised fine-tuning
        names = [n for n in names if graph[n].op != "dense"]
    reps, records = plan(ctx, graph, params, names)
    small, sp = decompose.apply(graph, params, reps)
    if distributed.is_main():
        checkpoint.save_checkpoint(path, small, sp, {"method": f"decompose-{ctx.cfg.decompose.method}"})
        atomic_write_json(rec_path, records)
    return ctx.backend.build(small, sp), records


def diagonal_layers(ctx: common.Context, graph) -> list[str]:
    if ctx.cfg.decompose.fc != "diagonal":
        return []
    return [n for n in candidates(graph, ctx.cfg.decompose) if graph[n].op == "dense"]


def diagonal_prox(ctx: common.Context, model, names):
    """``on_step(lr, trainer)`` for :func:`methods.common.fit`: after every SGD step, the proximal step
    of ``(lam / 2) ||W (.) (1 - D)||^2`` with the step's learning rate, i.e. the off-diagonal weights of
    the dense layers ``names`` divided by ``1 + lr * lam`` (``lam`` = ``decompose.diag_lambda``).
    Only those weights cross the backend boundary."""
    lam = ctx.cfg.decompose.diag_lambda
    keys = [f"{n}.weight" for n in names]

    def on_step(lr, trainer):
        w = ctx.backend.get_weights(model, keys)
        ctx.backend.set_weights(model, {k: decompose.shrink_off_diagonal(v, lr * lam) for k, v in w.items()},
                                strict=False)
    return on_step


def compact(ctx: common.Context, model, fc_kind: str, names):
    """``model`` with the given dense layers replaced (no fine-tuning), and the records."""
    reps, records = plan(ctx, model.graph, ctx.backend.get_weights(model), names, fc_kind)
    graph, params = decompose.apply(model.graph, ctx.backend.get_weights(model), reps)
    return ctx.backend.build(graph, params), records


def run(ctx: common.Context) -> dict:
    d = ctx.cfg.decompose
    teacher = common.start_model(ctx)
    models = {"baseline": teacher}
    student, records = decompose_model(ctx, teacher)
    models["decomposed"] = ctx.backend.build(student.graph, ctx.backend.get_weights(student))
    diag = diagonal_layers(ctx, student.graph)
    if diag:  # the structure without the regulariser, for comparison
        models["diagonal FC, no reg."] = compact(ctx, teacher, "diagonal", diag)[0]
    elif d.fc == "svd" and any(r["op"] == "dense" and r["kept"] for r in records):
        fc = [r["layer"] for r in records if r["op"] == "dense" and r["kept"]]
        models["SVD FC only"] = compact(ctx, teacher, "svd", fc)[0]
    common.fit(ctx, student, ctx.cfg.finetune, "finetune",
               on_step=diagonal_prox(ctx, student, diag) if diag else None)
    models["fine-tuned" + (" (diag. reg.)" if diag else "")] = student
    if diag:
        student, diag_records = compact(ctx, student, "diagonal", diag)
        records += diag_records
        models["diagonal FC"] = student
    rows = [common.summary_row(ctx, name, m) for name, m in models.items()]
    report.add_latencies(ctx.backend, rows, list(models.values()), ctx.cfg.decompose.report_repeats)
    final = ctx.path("final.safetensors")
    common.save_model(ctx.backend, student, final, method=f"decompose-{d.method}")
    print(report.format_table(rows))
    print("layers: " + ", ".join(f"{r['layer']} {r.get('kind', '')} {r.get('ranks', r.get('rank', ''))}"
                                  .strip() + ("" if r["kept"] else " (kept dense)") for r in records))
    metrics = {"backend": ctx.backend.name, "rows": rows, "layers": records, "checkpoint": final,
               "mac_fraction": flops.count_macs(student.graph) / rows[0]["macs"]}
    common.write_metrics(ctx, metrics)
    return metrics


def check(ctx: common.Context) -> None:
    """Every layer named in ``decompose.layers``, ``skip`` and ``ranks`` exists in the model and is a conv
    or dense layer; every given rank lies in its range (before any work)."""
    from compress_core.criteria import lowrank
    from compress_core.errors import UserError

    graph = common.start_graph(ctx)
    pshapes = graph.param_shapes()
    d = ctx.cfg.decompose
    for name in (*d.layers, *d.skip):
        node = graph[name]  # one-line error for an unknown name
        if node.op not in ("conv", "dense"):
            raise UserError(f"decompose: '{name}' is a {node.op}, not a conv or dense layer")
    for entry in d.ranks:
        if not isinstance(entry, (tuple, list)) or len(entry) < 2 or not isinstance(entry[0], str):
            raise UserError(f"decompose.ranks: entry {entry!r} is not (name, rank...)")
        name, ranks = entry[0], tuple(entry[1:])
        node = graph[name]
        shape = pshapes[f"{name}.weight"]
        want = 2 if node.op == "conv" and d.method == "tucker2" else 1
        if len(ranks) != want:
            raise UserError(f"decompose.ranks: '{name}' needs {want} rank(s), got {ranks!r}")
        if node.op == "conv" and d.method == "tucker2":
            dims = (shape[0] // node.attrs["groups"], shape[1])
        elif node.op == "conv":
            dims = (lowrank.cp_max_rank(shape),)
        else:
            dims = (min(shape),)
        for r, dim in zip(ranks, dims):
            if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= dim:
                raise UserError(f"decompose.ranks: rank {r!r} of '{name}' outside [0, {dim}]")


def cli(argv=None) -> int:
    return common.main(run, __doc__.splitlines()[0], "decompose_resnet20_digits.py", argv, check=check)


if __name__ == "__main__":
    sys.exit(cli())
