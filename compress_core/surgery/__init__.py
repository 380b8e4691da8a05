"""The one way to cut channels: channel groups, a planner and one-pass pruning (numpy).

* :func:`channel_groups` finds every set of channels that must be cut together;
* :func:`plan` turns per-group scores into kept unit indices (ratio, per-group
  ratios or counts, a MAC target; minimum width, multiple; local or global ranking);
* :func:`prune` applies it to a graph and its weights; :func:`mask` is the same cut
  as zeroed reader columns (its reference); :func:`select_inputs` makes one reader
  read a subset of a shared stream;
* :func:`remove_blocks` removes residual blocks whole (:func:`removable_blocks`: those with an
  identity shortcut), the depth cut;
* :func:`l1_norms` is the weights-only baseline criterion, :func:`l1_prune` the L1-norm
  baseline every benchmark compares with.

Methods supply scores and a plan, nothing else.
"""

from compress_core.surgery.depth import blocks_holding, removable_blocks, remove_blocks
from compress_core.surgery.groups import (
           ChannelGroup,
           Member,
           channel_groups,
           group_of,
           groups_read_by,
)
from compress_core.surgery.importance import l1_norms, l1_prune
from compress_core.surgery.plan import plan, ratio_for_macs, round_width, top
from compress_core.surgery.prune import (
           check_keep,
           mask,
           prune,
           pruned_graph,
           select_inputs,
           unit_indices,
)

__all__ = ["ChannelGroup", "Member", "blocks_holding", "channel_groups", "check_keep", "group_of", "groups_read_by", "l1_norms", "l1_prune",
           "mask", "plan", "prune", "pruned_graph", "ratio_for_macs", "removable_blocks", "remove_blocks",
           "round_width", "select_inputs", "top", "unit_indices"]
