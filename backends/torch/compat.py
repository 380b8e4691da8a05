"""``torchvision.models`` beside this torch, whatever torchvision build is installed.

A torchvision wheel built for another torch (the registry's CUDA build beside the CPU torch
2.13) has compiled operators that do not load, and its import then fails on two fake-kernel
registrations ("operator torchvision::nms does not exist"). Its classification models are pure
Python: defining the two operators' schemas first lets them import and run. Used by the tests
and the benchmarks; a matching torchvision needs none of it.
"""

from __future__ import annotations

import torch

_LIBRARIES: list = []  # a schema library must outlive the import


def torchvision_models():
    """The ``torchvision.models`` module (see the module docstring)."""
    try:
        torch.ops.torchvision.nms  # noqa: B018 - a torchvision whose compiled operators load defines it
    except (AttributeError, RuntimeError):
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARIES.append(lib)
    import torchvision.models

    return torchvision.models
