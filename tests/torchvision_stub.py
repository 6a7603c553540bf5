"""A stand-in ``torchvision`` for the reference tools the tests import (never installed here:
its wheel pulls a multi-GB CUDA build). zennit imports two ResNet block classes from it, LXT's
efficient patches import ``torchvision.models.vision_transformer.nn``; nothing else is used."""

from __future__ import annotations

import importlib.machinery
import sys
import types


def _module(name: str) -> types.ModuleType:
    m = sys.modules.get(name) or types.ModuleType(name)
    if m.__spec__ is None:
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = m
    return m


def install() -> None:
    """Put the stub in ``sys.modules`` (a real torchvision, if one is there, is left alone)."""
    if "torchvision" in sys.modules and not getattr(sys.modules["torchvision"], "_lrpath_stub", False):
        return
    import torch

    tv = _module("torchvision")
    tv._lrpath_stub = True
    tv.models = _module("torchvision.models")
    tv.models.resnet = _module("torchvision.models.resnet")
    if not hasattr(tv.models.resnet, "Bottleneck"):
        tv.models.resnet.Bottleneck = type("Bottleneck", (torch.nn.Module,), {})
        tv.models.resnet.BasicBlock = type("BasicBlock", (torch.nn.Module,), {})
    tv.models.vision_transformer = _module("torchvision.models.vision_transformer")
    tv.models.vision_transformer.nn = torch.nn
