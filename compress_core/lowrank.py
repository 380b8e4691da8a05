"""Stable public path of :mod:`compress_core.criteria.lowrank` (EVBMF ranks, Tucker-2, CP)."""

from compress_core.criteria.lowrank import (
    CPFactors,
    EVBMFResult,
    check_rank,
    cp,
    cp_max_rank,
    cp_rank,
    cp_reconstruct,
    evbmf,
    evbmf_rank,
    evbmf_spectrum,
    tau_bar,
    tucker2,
    tucker2_ranks,
    tucker2_reconstruct,
    unfold,
    weaken,
)

__all__ = ["CPFactors", "EVBMFResult", "check_rank", "cp", "cp_max_rank", "cp_rank", "cp_reconstruct", "evbmf",
           "evbmf_rank", "evbmf_spectrum", "tau_bar", "tucker2", "tucker2_ranks", "tucker2_reconstruct", "unfold",
           "weaken"]
