"""High-quality voxel-wise contrastive loss L_hqcl of DVCL (section 3.3, eqs. 7-10).

    R_c = {r | labeled, y = c, argmax p = c} u {r | unlabeled, y_hat = c, reliable}        (7)
    P_c = mean of the anchors of class c stored in a memory bank                              (8)
    G_c = {r | labeled, argmax p = c, y != c}                                                 (9)
    L^c = -1/M sum_m log[Phi(r_cm, P_c) / (Phi(r_cm, P_c) + sum_n Phi(r_cm, r^-_cmn))]     (10)

with Phi_sigma(a, b) = exp(cos(a, b) / sigma), M = 256 anchors and N = 50 negatives per anchor,
sigma = 1, and L_hqcl the mean of L^c over the C classes (background included). Where the paper is
silent:

- anchors: M drawn uniformly without replacement from R_c (all of R_c when smaller); negatives: N
  per anchor drawn uniformly with replacement from G_c (which can be smaller than N);
- the bank stores this step's anchors before the centres are taken (at most ``bank_size`` per class
  and step over all DDP ranks, a uniform random subset of R_c); it holds detached copies, so no gradient flows through
  P_c; gradients reach the anchors and the negatives (eq. 9 "guides these voxels away");
- L_hqcl averages over the classes with at least one anchor and a centre: 1/C over the classes
  present; an anchor without negatives scores log(1) = 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nnunet_uda.losses.precision import full_precision
from nnunet_uda.losses.sampling import grouped_by_class, sample_per_class, uniform
from nnunet_uda.distributed import distributed_world_size
from nnunet_uda.memory import ClassMemoryBank


@full_precision
def hqcl_loss(anchors: torch.Tensor, anchor_valid: torch.Tensor, centres: torch.Tensor, centre_valid: torch.Tensor,
              negatives: torch.Tensor, negative_valid: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """L_hqcl (eq. 10). ``anchors`` (C, M, d) with ``anchor_valid`` (C, M); ``centres`` (C, d) P_c with
    ``centre_valid`` (C,); ``negatives`` (C, M, N, d) per anchor with ``negative_valid`` (C, M, N).
    Mean over the valid anchors of a class, then over the classes with a valid anchor and centre;
    without any, a zero connected to ``anchors``. In full precision (:mod:`~nnunet_uda.losses.precision`)."""
    a = F.normalize(anchors, dim=-1)
    positive = (a * F.normalize(centres, dim=-1)[:, None]).sum(-1) / sigma  # (C, M)
    negative = torch.einsum("cmd,cmnd->cmn", a, F.normalize(negatives, dim=-1)) / sigma
    negative = negative.masked_fill(~negative_valid, float("-inf"))
    terms = torch.logsumexp(torch.cat((positive[..., None], negative), -1), -1) - positive  # -log of eq. 10's ratio
    per_class = torch.where(anchor_valid, terms, 0).sum(1) / anchor_valid.sum(1).clamp_min(1)
    present = anchor_valid.any(1) & centre_valid
    if not bool(present.any()):
        return anchors.sum() * 0.0
    return per_class[present].mean()


class HighQualityContrast:
    """L_hqcl with the anchor, centre and negative selection of eqs. 7-9 and a :class:`ClassMemoryBank`.

    Called once per step with the voxels of both networks concatenated; every DDP rank must call it
    each step (the bank gathers). ``bank_size`` (per class) is not in the paper: 4096 features per
    class keeps the centre a mean over thousands of anchors, spanning many steps for small organs,
    at 14 classes x 4096 x d float32 (29 MiB for d = 128).
    """

    bank_size = 4096
    anchors = 256
    negatives = 50
    sigma = 1.0

    def __init__(self, num_classes: int, dim: int, bank_size: int = bank_size, anchors: int = anchors,
                 negatives: int = negatives, sigma: float = sigma):
        self.num_classes, self.dim = num_classes, dim
        self.bank_size, self.anchors, self.negatives, self.sigma = bank_size, anchors, negatives, sigma
        self.bank = ClassMemoryBank(num_classes, bank_size, dim)

    def __call__(self, features: torch.Tensor, labels: torch.Tensor, predicted: torch.Tensor, labeled: torch.Tensor,
                 reliable: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``features`` (N, d) projection-head features; ``labels`` (N,) ground truth where ``labeled``,
        pseudo-label elsewhere (values outside 0 .. C - 1, e.g. nnU-Net's ignore label, are skipped);
        ``predicted`` (N,) argmax of the same network; ``labeled``, ``reliable`` (N,) bool (ESM)."""
        c, device = self.num_classes, features.device
        if self.bank.device != device:
            self.bank.to(device)
        labels, predicted = labels.long(), predicted.long()
        known = (labels >= 0) & (labels < c)
        is_anchor = known & torch.where(labeled, predicted == labels, reliable)  # eq. 7
        is_negative = known & labeled & (predicted != labels)  # eq. 9, negative of class `predicted`

        per_rank = math.ceil(self.bank_size / distributed_world_size())
        index, valid = sample_per_class(torch.where(is_anchor, labels, c), c, max(self.anchors, per_rank), generator)
        stored = valid[:, :per_rank]
        self.bank.push(features.detach()[index[:, :per_rank][stored]],
                       torch.arange(c, device=device)[:, None].expand_as(stored)[stored])
        centres, centre_valid = self.bank.centres()
        if features.shape[0] == 0:
            return features.sum() * 0.0
        index, valid = index[:, :self.anchors], valid[:, :self.anchors]

        order, count, start = grouped_by_class(torch.where(is_negative, predicted, c), c)
        draw = (uniform((c, self.anchors, self.negatives), generator, device) * count[:, None, None]).long()
        draw = torch.minimum(draw, (count - 1).clamp_min(0)[:, None, None])
        negative = order[(start[:, None, None] + draw).clamp_max(features.shape[0] - 1)]
        negative_valid = (count > 0)[:, None, None].expand_as(negative)
        return hqcl_loss(features[index], valid, centres.to(device), centre_valid, features[negative],
                         negative_valid, self.sigma)

    def state_dict(self) -> dict:
        return self.bank.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.bank.load_state_dict(state)
