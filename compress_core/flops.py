"""Stable public path of :mod:`compress_core.ir.flops` (MAC and parameter counts)."""

from compress_core.ir.flops import (
    LayerCost,
    count_macs,
    count_params,
    layer_costs,
    summary,
)

__all__ = ["LayerCost", "count_macs", "count_params", "layer_costs", "summary"]
