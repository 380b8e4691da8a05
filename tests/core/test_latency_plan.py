"""The latency-aware width search (compress_core.surgery.latency) and CDC's latency plan, on synthetic
timers whose best answer is derived by hand."""

from __future__ import annotations

import numpy as np
import pytest

from compress_core.errors import UserError
from compress_core.ir import flops, zoo
from compress_core.recipes import cdc
from compress_core.surgery.latency import greedy_choice, latency_search

# two tiers; a choice's MACs is the sum of the tiers' MACs at their options
A_MACS, B_MACS = [100, 60, 20], [100, 50, 0]


def _macs(choice):
    return A_MACS[choice[0]] + B_MACS[choice[1]]


def test_greedy_jumps_past_a_slow_width_to_the_most_time_per_mac():
    # saved per option (option 0 saves nothing). From (0, 0), 200 MACs, budget 120:
    #   A->1: 10 / 40 = 0.25   A->2: 12 / 80 = 0.15   B->1: 2 / 50 = 0.04   B->2: 30 / 100 = 0.30
    # B->2 wins and meets the budget (100). Single steps would take A->1 (0.25 > 0.04), then
    # A->2 (2 / 40 = 0.05 > B->1's 0.04): 120 MACs but 12 saved instead of 30.
    saved = [[0.0, 10.0, 12.0], [0.0, 2.0, 30.0]]
    choice, steps = greedy_choice([3, 3], saved, _macs, 120, base=100.0)
    assert choice == (0, 2) and steps == [(1, 2)]


def test_greedy_moves_until_the_budget_is_met():
    # budget 70: after B->2 (100 MACs), from (0, 2): A->1 10 / 40 = 0.25, A->2 12 / 80 = 0.15;
    # A->1 gives 60 <= 70
    saved = [[0.0, 10.0, 12.0], [0.0, 2.0, 30.0]]
    choice, steps = greedy_choice([3, 3], saved, _macs, 70, base=100.0)
    assert choice == (1, 2) and steps == [(1, 2), (0, 1)]
    assert _macs(choice) <= 70


def test_greedy_widens_back_what_an_overshooting_jump_left_when_it_costs_less_than_average():
    # budget 150: B->2 (gain 0.30) lands at 100 MACs, 70 ms predicted: 0.70 ms per MAC. Widening B
    # back to 1 adds 50 MACs for 28 ms, 0.56 per MAC < 0.70: taken (150 MACs, 98 ms: 0.65 per MAC)
    saved = [[0.0, 10.0, 12.0], [0.0, 2.0, 30.0]]
    choice, steps = greedy_choice([3, 3], saved, _macs, 150, base=100.0)
    assert choice == (0, 1) and steps == [(1, 2), (1, 1)]
    # a faster original (40 ms: the plan 10 ms, 0.10 per MAC) makes the 28 ms too dear: the jump stays
    choice, steps = greedy_choice([3, 3], saved, _macs, 150, base=40.0)
    assert choice == (0, 2) and steps == [(1, 2)]


def test_greedy_widens_back_to_the_floor_whatever_the_time():
    # budget 150, base 40 ms: the jump to (0, 2) leaves 100 MACs and widening B back costs more per MAC
    # than average (previous test). A floor of 0.9 (135 MACs) widens it anyway: the cheapest widening that
    # fits is B -> 1 (150 MACs); A has no wider option and B -> 0 (200) is over the budget
    saved = [[0.0, 10.0, 12.0], [0.0, 2.0, 30.0]]
    choice, steps = greedy_choice([3, 3], saved, _macs, 150, base=40.0, floor=0.9)
    assert choice == (0, 1) and steps == [(1, 2), (1, 1)]
    # a floor the plan already holds changes nothing (100 >= 0.6 * 150)
    assert greedy_choice([3, 3], saved, _macs, 150, base=40.0, floor=0.6)[0] == (0, 2)


def test_greedy_names_an_unreachable_budget():
    with pytest.raises(UserError, match="cannot be reached"):
        greedy_choice([3, 3], [[0, 1, 2], [0, 1, 2]], _macs, 10, base=100.0)


def _additive_timer(saved, interaction=0.0):
    """A network's time: 100 ms minus the savings of its options; ``interaction`` ms are added back
    when both tiers are cut (the two savings overlap), which the search's additive model misses."""
    calls = []

    def measure(choices):
        calls.append(list(choices))
        return [100.0 - saved[0][a] - saved[1][b] + (interaction if a and b else 0.0) for a, b in choices]
    return measure, calls


def test_search_times_every_single_cut_then_the_plan_and_the_baseline():
    saved = [[0.0, 10.0, 12.0], [0.0, 2.0, 30.0]]
    measure, calls = _additive_timer(saved)
    s = latency_search([3, 3], _macs, measure, 70, baseline=(2, 1))
    assert calls == [[(0, 0), (1, 0), (2, 0), (0, 1), (0, 2)], [(1, 2), (2, 1)]]
    assert s.saved == saved and s.base_ms == 100.0
    assert s.greedy == (1, 2) and s.choice == (1, 2) and s.macs == 60
    assert s.ms == 100.0 - 10.0 - 30.0 and s.baseline_ms == 100.0 - 12.0 - 2.0


def test_search_times_the_cuts_a_few_at_a_time_each_few_against_the_uncut_network():
    saved = [[0.0, 10.0, 12.0], [0.0, 2.0, 30.0]]
    measure, calls = _additive_timer(saved)
    s = latency_search([3, 3], _macs, measure, 70, chunk=3)
    assert calls[:2] == [[(0, 0), (1, 0), (2, 0), (0, 1)], [(0, 0), (0, 2)]]
    assert max(map(len, calls)) == 4 and s.saved == saved and s.choice == (1, 2)
    with pytest.raises(UserError, match="chunk=0"):
        latency_search([3, 3], _macs, measure, 70, chunk=0)
    with pytest.raises(UserError, match="floor .* got 1.5"):
        latency_search([3, 3], _macs, measure, 70, floor=1.5)


def test_search_keeps_the_baseline_when_it_measures_faster():
    # the cuts of the two tiers overlap: 40 ms come back when both are cut, which the single cuts
    # cannot show. Budget 120: the greedy plan (0, 2) cuts one tier, 70 ms, against the baseline
    # (2, 0) at 88 ms: the plan stays.
    saved = [[0.0, 10.0, 12.0], [0.0, 2.0, 30.0]]
    measure, _ = _additive_timer(saved, interaction=40.0)
    s = latency_search([3, 3], _macs, measure, 120, baseline=(2, 0))
    assert (s.greedy, s.choice, s.ms, s.baseline_ms) == ((0, 2), (0, 2), 70.0, 88.0)
    # budget 70: the greedy plan (1, 2) measures 100 - 10 - 30 + 40 = 100 ms, the baseline (2, 2)
    # 100 - 12 - 30 + 40 = 98 ms: the baseline wins
    s = latency_search([3, 3], _macs, measure, 70, baseline=(2, 2))
    assert (s.greedy, s.choice, s.ms, s.baseline_ms, s.macs) == ((1, 2), (2, 2), 98.0, 98.0, 20)


def test_search_rejects_a_baseline_over_the_budget():
    measure, calls = _additive_timer([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    with pytest.raises(UserError, match="over the budget"):
        latency_search([3, 3], _macs, measure, 100, baseline=(1, 0))
    assert not calls  # checked before any timing


def test_cdc_tiers_of_resnet56_are_its_streams_and_its_stages_inner_channels():
    g = zoo.build("resnet56", 10, (3, 32, 32))
    points = cdc.mask_points(g)
    tiers = cdc.tiers(g, points, "group")
    convs = [sorted(points[i].conv for i in t) for t in tiers]
    stage = {s: [f"layer{s}.{b}" for b in range(9)] for s in (1, 2, 3)}
    # each stream is read by its stage's conv1 but the first (which reads the previous stream)
    # and by the next stage's first conv1; each stage's conv2 reads its block's inner channels
    assert sorted(map(sorted, convs)) == sorted([
        sorted([f"{b}.conv1" for b in stage[1]] + ["layer2.0.conv1"]),
        sorted([f"{b}.conv1" for b in stage[2][1:]] + ["layer3.0.conv1"]),
        sorted([f"{b}.conv1" for b in stage[3][1:]]),
        *[sorted(f"{b}.conv2" for b in stage[s]) for s in (1, 2, 3)],
    ])
    # the reference form has no stream groups: the same masks, tiered by width and map size
    assert len(cdc.tiers(g, points, "select")) == 6


def test_cdc_latency_plan_cuts_where_the_timer_says_time_goes():
    """A timer where only the 32x32 stage costs time (ms = its masks' kept channels): the plan cuts
    stage 1's stream and inner channels to the narrowest option (8 of 16 with multiple 8), meets the
    MAC target, and is no slower than the uniform plan by that timer."""
    g = zoo.build("resnet56", 10, (3, 32, 32))
    points = cdc.mask_points(g)
    shapes = g.shapes()
    first = [i for i, p in enumerate(points) if shapes[p.tap][1:] == (32, 32)]

    def measure(plans):
        return [float(sum(k[i] for i in first)) for k in plans]

    found = cdc.latency_counts(g, points, 0.5, measure, multiple=8, stream="group")
    assert all(found.counts[i] == 8 for i in first)
    assert all(k % 8 == 0 and 0 < k <= p.width for k, p in zip(found.counts, points))
    assert cdc.macs_after(g, points, found.counts, "group") <= 0.5 * flops.count_macs(g)
    uniform = cdc.uniform_counts(points, found.uniform_ratio, 1, 8)
    assert measure([found.counts])[0] <= measure([uniform])[0]
    assert found.search.ms == measure([found.counts])[0]
    # every tier keeps at least a quarter of its width (LATENCY_RATIOS stop at 3/4)
    assert all(k >= p.width // 4 for k, p in zip(found.counts, points))


def test_cdc_latency_plan_is_the_uniform_plan_when_that_times_fastest():
    g = zoo.build("resnet56", 10, (3, 32, 32))
    points = cdc.mask_points(g)
    uniform = cdc.uniform_counts(points, cdc.ratio_for_macs(g, points, 0.5, 1, 8, "group"), 1, 8)

    def measure(plans):  # anything but the uniform plan is slow
        return [1.0 if list(k) == uniform else 2.0 + np.mean(k) for k in plans]

    found = cdc.latency_counts(g, points, 0.5, measure, multiple=8, stream="group")
    assert found.counts == uniform and found.search.ms == 1.0
