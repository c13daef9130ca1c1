"""Cross-entropy (or focal) and soft Dice for partially annotated and unlabeled cases.

A case annotates a subset of the classes (the domain table says which, per case). A class that is
not annotated in a case is drawn as background in its label file, so a background voxel there
means "background or one of the unannotated classes". The loss follows that meaning (the
marginal loss of Shi et al., MedIA 2021, used by partial-label multi-organ segmentation):

- cross-entropy on the merged distribution in which the background probability is
  p_0 + sum over unannotated classes k of p_k; with ``focal_gamma`` > 0 the focal loss of Lin et
  al. 2017, -(1 - p_t)^gamma log p_t (no alpha weighting), on the same merged distribution;
- soft Dice over the annotated foreground classes of each sample only.

A voxel labeled with a class the sample does not annotate (a label file holding classes of two
sources, as AICL's partially labeled cases with pseudo-labeled organs do) is read as merged
background too, so one label file serves the loss of each source with its own ``annotated`` mask.
Voxels with nnU-Net's ignore label count in neither term, and a case with no annotated foreground
class (e.g. a fully unlabeled one) contributes nothing. When every class is annotated in every case
and ``focal_gamma`` is 0, the loss equals nnU-Net's ``DC_and_CE_loss`` (CE weight 1, Dice weight 1,
smooth 1e-5, no background Dice), which the tests check.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from nnunetv2.utilities.ddp_allgather import AllGatherGrad
from torch import nn

from nnunet_uda.distributed import all_reduced, distributed_world_size
from nnunet_uda.losses.precision import full_precision


def merged_log_probs(logits: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """Log-probabilities with unannotated classes pooled into the background channel.

    ``logits``: (B, C, *spatial); ``annotated``: (B, C) bool (the background column is ignored).
    Channels of unannotated classes are returned unchanged; they are never a target.
    """
    log_p = F.log_softmax(logits, 1)
    pooled = annotated.clone()
    pooled[:, 0] = False
    pooled = ~pooled  # background and unannotated classes
    shape = pooled.shape + (1,) * (logits.ndim - 2)
    background = torch.logsumexp(log_p.masked_fill(~pooled.view(shape), float("-inf")), 1, keepdim=True)
    return torch.cat((background, log_p[:, 1:]), 1)


def partial_soft_dice(probs: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor, valid: torch.Tensor,
                      batch_dice: bool, smooth: float = 1e-5) -> torch.Tensor:
    """Negative mean soft Dice over annotated foreground (sample, class) pairs.

    ``probs`` (B, C, *s) softmax output; ``target`` (B, *s) integer labels; ``valid`` (B, *s) voxels
    that are not ignore. With ``batch_dice`` the sums run over the samples annotating each class.
    Classes annotated by no sample of the batch are left out of the mean. Under DDP the batch sums run over
    every rank's samples (nnU-Net's ``AllGatherGrad``, as its own batch Dice), so each rank's loss is the global
    batch's and DDP's gradient average is the gradient of it.
    """
    axes = tuple(range(2, probs.ndim))
    num_classes = probs.shape[1]
    with torch.no_grad():
        onehot = F.one_hot(target.long(), num_classes).movedim(-1, 1)[:, 1:].float()
        mask = valid.unsqueeze(1).float()
        sum_gt = (onehot * mask).sum(axes)
    fg = probs[:, 1:]
    intersect = (fg * onehot * mask).sum(axes)
    sum_pred = (fg * mask).sum(axes)
    weight = annotated[:, 1:].float()
    if batch_dice:
        intersect, sum_pred, sum_gt = ((t * weight).sum(0) for t in (intersect, sum_pred, sum_gt))
        weight = weight.sum(0)
        if distributed_world_size() > 1:  # as nnU-Net's batch Dice under DDP: the sums of every rank's share
            intersect, sum_pred, sum_gt = (AllGatherGrad.apply(t).sum(0) for t in (intersect, sum_pred, sum_gt))
            weight = all_reduced(weight)
        weight = (weight > 0).float()
    dice = (2 * intersect + smooth) / (sum_gt + sum_pred + smooth).clamp_min(1e-8)
    if weight.sum() == 0:
        return probs.sum() * 0.0
    return -(dice * weight).sum() / weight.sum()


class PartialLabelLoss(nn.Module):
    """CE (or focal, ``focal_gamma`` > 0) + soft Dice, weights 1 and 1 as nnU-Net, honouring
    per-case annotated classes. AICL's focal-Dice l_sup (section 2.3) is ``focal_gamma=2``."""

    def __init__(self, ignore_label: int | None, batch_dice: bool, focal_gamma: float = 0.0, smooth: float = 1e-5):
        super().__init__()
        self.ignore_label = ignore_label
        self.batch_dice = batch_dice
        self.focal_gamma = focal_gamma
        self.smooth = smooth

    @full_precision
    def forward(self, logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
        """``target`` (B, 1, *s) as nnU-Net's loader gives it; ``annotated`` (B, C) bool. In full precision."""
        target = target[:, 0].long()
        valid = target != self.ignore_label if self.ignore_label is not None else torch.ones_like(target, dtype=torch.bool)
        clean = torch.where(valid, target, 0)
        clean = torch.where(annotated.gather(1, clean.flatten(1)).view_as(clean), clean, 0)
        dice = partial_soft_dice(torch.softmax(logits, 1), clean, annotated, valid, self.batch_dice, self.smooth)
        valid = valid & annotated[:, 1:].any(1).view((-1,) + (1,) * (valid.ndim - 1))
        if not valid.any():
            return dice
        log_pt = merged_log_probs(logits, annotated).gather(1, clean.unsqueeze(1))[:, 0][valid]
        if self.focal_gamma == 0:
            return -log_pt.mean() + dice
        return -((1 - log_pt.exp()) ** self.focal_gamma * log_pt).mean() + dice
