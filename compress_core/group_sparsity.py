"""Stable public path of :mod:`compress_core.criteria.group_sparsity` (Hinge's proximal operators)."""

from compress_core.criteria.group_sparsity import (
    GROUPS,
    PENALTIES,
    GradRatio,
    SearchResult,
    anneal,
    balancing_weights,
    decompose,
    from_1x1,
    group_norms,
    group_prox,
    half_prox,
    keep_groups,
    keep_top,
    merge,
    prox,
    prune_columns,
    shrink_factors,
    svd_init,
    threshold_search,
    to_1x1,
)

__all__ = ["GROUPS", "PENALTIES", "GradRatio", "SearchResult", "anneal", "balancing_weights", "decompose",
           "from_1x1", "group_norms", "group_prox", "half_prox", "keep_groups", "keep_top", "merge", "prox",
           "prune_columns", "shrink_factors", "svd_init", "threshold_search", "to_1x1"]
