"""Random draws of voxels by class, shared by the contrastive losses (bounded, vectorised, reproducible
with a ``torch.Generator``)."""
from __future__ import annotations

import torch


def uniform(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """U[0, 1) of ``shape`` on ``device`` drawn from ``generator`` (on whichever device it lives)."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def permutation(n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """A uniform random permutation of 0 .. n - 1 on ``device`` drawn from ``generator``."""
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def grouped_by_class(labels: torch.Tensor, num_classes: int, generator: torch.Generator | None = None,
                     shuffle: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions of ``labels`` (N,) grouped by class (labels outside 0 .. C - 1 last), in random order
    within a class if ``shuffle``; with each class's count (C,) and first place in the order (C,)."""
    labels = labels.long()
    valid = (labels >= 0) & (labels < num_classes)
    key = torch.where(valid, labels, num_classes)
    order = torch.arange(labels.numel(), device=labels.device)
    if shuffle:
        order = torch.argsort(uniform(labels.numel(), generator, labels.device))
    order = order[torch.sort(key[order], stable=True).indices]
    count = torch.bincount(key, minlength=num_classes + 1)[:num_classes]
    return order, count, torch.cumsum(count, 0) - count


def sample_per_class(labels: torch.Tensor, num_classes: int, k: int,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each class, ``k`` positions of ``labels`` (N,) with that label, drawn uniformly without
    replacement. Returns (C, k) indices and (C, k) validity: a class with n < k positions fills
    its first n columns, the others are invalid (index 0). Labels outside 0 .. C - 1 are never drawn."""
    order, count, start = grouped_by_class(labels, num_classes, generator, shuffle=True)
    column = torch.arange(k, device=labels.device)
    valid = column[None, :] < count[:, None]
    if labels.numel() == 0:
        return torch.zeros((num_classes, k), dtype=torch.long, device=labels.device), valid
    place = (start[:, None] + column[None, :]).clamp_max(labels.numel() - 1)
    return torch.where(valid, order[place], 0), valid
