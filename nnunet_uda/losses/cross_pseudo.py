"""Cross pseudo supervision (Chen et al., CVPR 2021), DVCL eq. 2."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunet_uda.losses.precision import full_precision


@full_precision
def cross_pseudo_supervision(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """CE(p_A, argmax p_B) + CE(p_B, argmax p_A) of two networks' logits (B, C, *s) of the same cases (DVCL's
    eq. 2: the unlabeled ones), each cross-entropy averaged over samples and voxels (eq. 2's 1/B_u). The pseudo
    labels are detached: each network learns from the other's hard decision, never the reverse. In full
    precision."""
    pseudo_a = logits_a.detach().argmax(1)
    pseudo_b = logits_b.detach().argmax(1)
    return F.cross_entropy(logits_a, pseudo_b) + F.cross_entropy(logits_b, pseudo_a)
