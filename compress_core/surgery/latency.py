"""Latency-aware widths: at a MAC target, cut where the runtime saves the most time per MAC.

A uniform ratio saves MACs evenly, but time is not spent evenly: on a CPU a conv on a large
map with few channels is memory-bound (its time follows the maps it reads and writes, which
a cut shrinks linearly while its MACs shrink quadratically), and a width between two multiples
of the vector length costs as much as the next multiple. Measured on ResNet-56 at batch 64 with
half the MACs (torch eager, 2-core AVX-512 Xeon): the uniform plan rounded to 8 (widths 8/24/48
for the three stages) is 1.69x faster, a plan that halves stages 1 and 3 and leaves stage 2
whole (8/32/32) is 1.85x; in ONNX Runtime the best is another plan again (16/16/32). So the
widths are chosen by timing the network on the runtime it will run on:

1. the layers are put into *tiers* that move together (the caller decides: e.g. every block's
   inner channels of one stage, or one residual stream); each tier has options, 0 the widest (the
   uncut tier), then fewer and fewer channels;
2. every single option (one tier cut, the others whole) is timed against the whole network, in
   turns (a few options at a time, each few with the whole network): ``saved[i][j]`` is the time
   option ``j`` of tier ``i`` alone saves;
3. greedy from the whole network: the move (one tier to a further option) with the most predicted
   time saved per MAC removed, the time predicted as the sum of the single savings, the MACs
   counted exactly, until the MAC budget is met; then tiers widened back while the budget allows:
   the cheapest in time per added MAC until the plan holds at least ``floor`` of the budget (a jump
   can overshoot the target by far, and the MACs a user allows are accuracy), then while the MACs
   added cost less time each than the plan's average;
4. the greedy plan and the caller's baseline (e.g. the uniform plan at the same target) are timed
   in turns; the faster one wins, so the result is never slower than the baseline as measured.

Additivity (step 3) is an approximation: cutting a stream and the blocks that read it saves less
than the two savings' sum. Step 4 guards it. This module only searches: the caller supplies the
MACs of a choice and a timer (:mod:`methods` times on a backend or ONNX Runtime).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from compress_core.errors import UserError

Choice = tuple[int, ...]


@dataclass
class LatencySearch:
    """The outcome: ``choice`` (an option per tier), its ``macs`` and measured ``ms``; the baseline's
    ``baseline_ms`` (None without one); ``saved[i][j]``, the measured time option ``j`` of tier ``i``
    saves alone (``saved[i][0] = 0``); ``base_ms``, the uncut network's time (median over the turns); ``greedy``:
    the greedy plan (``choice`` is it unless the baseline was faster)."""
    choice: Choice
    macs: int
    ms: float
    base_ms: float
    saved: list[list[float]]
    greedy: Choice
    baseline_ms: float | None = None
    steps: list[tuple[int, int]] = field(default_factory=list)


def greedy_choice(num_options: Sequence[int], saved: Sequence[Sequence[float]], macs: Callable[[Choice], int],
                  budget: float, base: float, floor: float = 0.0) -> tuple[Choice, list[tuple[int, int]]]:
    """The greedy plan of step 3: from all zeros, move the tier ``i`` from its option ``j`` to the
    further option ``k > j`` with the largest ``(saved[i][k] - saved[i][j]) / (macs(now) - macs(moved))``
    (ties: the lower tier, the nearer option) until ``macs(choice) <= budget``; then, while the budget
    allows, widen the tier ``i`` from ``j`` back to the option ``k < j`` with the least
    ``(saved[i][j] - saved[i][k]) / (macs(widened) - macs(now))``, if that time per added MAC is below
    the plan's average (``base`` ms, the uncut network's, minus the savings, over its MACs), and
    regardless of that while the plan has fewer than ``floor * budget`` MACs: a jump may overshoot the
    target by far, and MACs the user allowed are accuracy worth keeping where they cost less time than
    the MACs kept already (the plan's MACs per ms only grow) or where the plan would fall far below the
    target the user asked for. Returns the choice
    and the moves, ``(tier, option)``. Jumps, not single steps: a width between two vector multiples can be
    slower than the wider one (a 24-wide conv against a 32-wide one) while the next is much faster.
    A move that removes no MACs is never taken; a budget no choice meets is a :class:`UserError`."""
    choice = [0] * len(num_options)
    now = macs(tuple(choice))
    steps = []

    def moves(narrower: bool):
        """``(i, k, macs)`` of every tier ``i`` moved to a narrower (or a wider) option ``k``."""
        for i, n in enumerate(num_options):
            for k in range(choice[i] + 1, n) if narrower else range(choice[i]):
                moved = choice.copy()
                moved[i] = k
                yield i, k, macs(tuple(moved))

    while now > budget:
        gains = [((saved[i][k] - saved[i][choice[i]]) / (now - m), i, k, m) for i, k, m in moves(True) if m < now]
        if not gains:
            raise UserError(f"a budget of {budget:.0f} MACs cannot be reached with these options "
                            f"(the smallest has {now})")
        _, i, k, now = max(gains, key=lambda g: (g[0], -g[1], -g[2]))  # ties: the lower tier, the nearer option
        choice[i] = k
        steps.append((i, k))
    while True:  # spend what the last jump left of the budget where it costs less time per MAC than average
        per_mac = (base - sum(saved[i][j] for i, j in enumerate(choice))) / now
        costs = [c for c in (((saved[i][choice[i]] - saved[i][k]) / (m - now), i, k, m)
                             for i, k, m in moves(False) if now < m <= budget)
                 if c[0] < per_mac or now < floor * budget]
        if not costs:
            return tuple(choice), steps
        _, i, k, now = min(costs)
        choice[i] = k
        steps.append((i, k))


def latency_search(num_options: Sequence[int], macs: Callable[[Choice], int],
                   measure: Callable[[Sequence[Choice]], Sequence[float]], budget: float,
                   baseline: Choice | None = None, chunk: int = 8, floor: float = 0.9) -> LatencySearch:
    """Steps 2-4 of the module docstring. ``num_options[i]``: tier ``i``'s options (option 0 the
    widest); ``macs(choice)``: the MACs of the network a choice gives; ``measure(choices)``: the
    time (ms) of each choice's network, timed in turns; ``budget``: the MACs allowed; ``baseline``: a
    choice the result must not be slower than (it must meet the budget); ``chunk``: single cuts per
    ``measure`` call (with the uncut network: ``chunk + 1`` networks alive at a time); ``floor``: the
    fraction of the budget the greedy plan widens back to whatever the time (:func:`greedy_choice`)."""
    if not num_options or min(num_options) < 1:
        raise UserError("a latency search needs at least one tier, each with at least one option")
    if not 0.0 <= floor <= 1.0:
        raise UserError(f"a latency search's MAC floor is a fraction of the budget in [0, 1], got {floor}")
    if chunk < 1:
        raise UserError(f"a latency search times at least one cut at a time, got chunk={chunk}")
    if baseline is not None and macs(baseline) > budget:
        raise UserError(f"the baseline plan has {macs(baseline)} MACs, over the budget of {budget:.0f}")
    zero = (0,) * len(num_options)

    def single(i: int, j: int) -> Choice:
        return zero[:i] + (j,) + zero[i + 1:]

    singles = [single(i, j) for i, n in enumerate(num_options) for j in range(1, n)]
    # in chunks, each timed in turns with the uncut network: a few networks alive at a time (ImageNet
    # ResNet-50 sessions take ~150 MB each), each saving against the uncut time of its own turns
    found, bases = {}, []
    for start in range(0, len(singles), chunk):
        part = singles[start:start + chunk]
        base, *times = measure([zero, *part])
        bases.append(base)
        found.update({c: base - t for c, t in zip(part, times)})
    base_ms = float(np.median(bases)) if bases else measure([zero])[0]
    saved = [[0.0] + [found[single(i, j)] for j in range(1, n)] for i, n in enumerate(num_options)]
    greedy, steps = greedy_choice(num_options, saved, macs, budget, base_ms, floor)
    if baseline is None or baseline == greedy:
        ms = measure([greedy])[0]
        return LatencySearch(greedy, macs(greedy), ms, base_ms, saved, greedy,
                             None if baseline is None else ms, steps)
    ms, baseline_ms = measure([greedy, baseline])
    best = greedy if ms <= baseline_ms else baseline
    return LatencySearch(best, macs(best), min(ms, baseline_ms), base_ms, saved, greedy, baseline_ms, steps)
