"""Entropy-based selection module (ESM) of DVCL (section 3.2, eqs. 4-6).

    e_ij = -sum_c p_ij(c) log p_ij(c)                       (4)
    reliable: e_ij < tau_e, unreliable: e_ij > tau_e          (5)
    tau_e = mean(e) + alpha * std(e) over the batch's voxels  (6)

The logarithm is natural and p log p is 0 at p = 0. Eq. 6's spread is the population standard
deviation (division by B * D * H * W), called "variance" in the text. A voxel exactly at tau_e is
neither reliable nor unreliable, as eq. 5's strict inequalities say; a batch of equal entropies
(std 0) has tau_e equal to them, exactly (not up to the rounding of the mean), so no voxel is
either. One call computes one network's threshold (tau_e^A or tau_e^B); under DDP every rank must make it.
"""
from __future__ import annotations

import torch
from torch.distributed import ReduceOp

from nnunet_uda.distributed import all_reduced


def voxel_entropy(probs: torch.Tensor) -> torch.Tensor:
    """(B, *spatial) entropy of eq. 4 of ``probs`` (B, C, *spatial), at least in float32, no gradient."""
    with torch.no_grad():
        p = probs.detach().to(torch.promote_types(probs.dtype, torch.float32))
        return -torch.special.xlogy(p, p).sum(1)


def entropy_split(probs: torch.Tensor, alpha: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ESM (eqs. 4-6) of one network's softmax ``probs`` (B, C, *spatial).

    Returns the entropy (B, *spatial) and the reliable and unreliable masks (bool, B, *spatial), all
    detached; the threshold pools every voxel of the batch, under DDP of every rank's share of it (the
    count, sum, sum of squares and extremes reduced over the ranks, in float64), so all ranks use one tau_e.
    No host synchronisation: with no voxel on any rank tau_e is NaN and both masks are empty.
    """
    with torch.no_grad():
        entropy = voxel_entropy(probs)
        e = entropy.double().flatten()
        count, total, squares = all_reduced(torch.stack((e.new_tensor(e.numel()), e.sum(), e.square().sum())))
        infinity = e.new_tensor(float("inf"))
        low, negative_high = all_reduced(torch.stack((e.min() if e.numel() else infinity,
                                                      -e.max() if e.numel() else infinity)), ReduceOp.MIN)
        mean = total / count
        tau = mean + alpha * (squares / count - mean * mean).clamp_min(0).sqrt()
        tau = torch.where(low == -negative_high, -negative_high, tau)
        return entropy, entropy < tau, entropy > tau
