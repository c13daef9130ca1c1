"""Losses in full precision under mixed precision training.

nnU-Net trains under ``torch.autocast`` on CUDA (float16), where matrix products run in half precision even on
float32 inputs: cosine similarities of unit vectors then agree to about three digits, tie in rankings and lose the
small differences that a temperature of 0.07 amplifies. Every loss of the plugin is therefore computed with
autocast off and its half-precision tensor arguments widened to float32 (:func:`full_precision`); float64 stays
float64. The networks' forward passes keep autocast.
"""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

Function = TypeVar("Function", bound=Callable)
HALF = (torch.float16, torch.bfloat16)


def _widen(value):
    return value.float() if torch.is_tensor(value) and value.dtype in HALF else value


def full_precision(function: Function) -> Function:
    """Decorator: ``function`` runs with autocast off on the device of its first tensor argument, its float16 and
    bfloat16 tensor arguments widened to float32 (gradients pass through the widening)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        device = next((v.device.type for v in (*args, *kwargs.values()) if torch.is_tensor(v)), "cpu")
        with torch.autocast(device, enabled=False):
            return function(*map(_widen, args), **{k: _widen(v) for k, v in kwargs.items()})
    return wrapper
