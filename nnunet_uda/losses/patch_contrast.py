"""Feature-patch contrastive loss l_fpc of AICL (PGCL, section 2.2.2, eq. 4).

    l_fpc = -E_m sum_k log [ exp(phi(F^k_m, F^k+)/tau) /
                             (exp(phi(F^k_m, F^k+)/tau) + sum_{j != k} exp(phi(F^k_m, F^j)/tau)) ]

phi is the cosine similarity between two organ feature patches (each cuboid flattened into one
vector, so the patch is compared as a whole, layout included). Positives are patches of the same
organ from the other samples of the batch, of either modality ("positive pairs are feature
patches sharing the same semantic class, while negative pairs come from different classes
irrespective of modality"); negatives are the patches of every other organ in the batch, the
anchor's own sample included. Eq. 4 writes one positive per anchor; with several, each positive
forms its own term (as in PatchNCE/InfoNCE) and an anchor's terms are averaged. The loss sums over
the organs of a sample and averages over samples (E_m). Anchors without a positive are skipped; an
anchor without negatives gives 0. The paper leaves tau open; the default 0.07 is PatchNCE's (Park
et al. 2020), which PGCL extends.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunet_uda.losses.precision import full_precision

#: stands in for -inf in masked log-sum-exps (keeps gradients finite where a set is empty)
MASKED = -1e4


def info_nce_terms(embeddings: torch.Tensor, classes: torch.Tensor, groups: torch.Tensor,
                   temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor, the mean over its positives of -log[e^{s+/tau} / (e^{s+/tau} + sum_neg e^{s/tau})].

    ``embeddings`` (N, D), compared by cosine similarity; positives share the anchor's class and come
    from another group, negatives have another class. Returns the terms (N,) and whether each anchor
    has a positive (N,); an anchor without negatives gets 0.
    """
    z = F.normalize(embeddings.float(), dim=1)
    logits = z @ z.T / temperature
    same_class = classes[:, None] == classes[None, :]
    positive = same_class & (groups[:, None] != groups[None, :])
    negatives = torch.logsumexp(logits.masked_fill(same_class, MASKED), 1, keepdim=True)
    terms = torch.logaddexp(logits, negatives) - logits  # -log of eq. 4's fraction, per (anchor, positive)
    return (terms * positive).sum(1) / positive.sum(1).clamp_min(1), positive.any(1)


@full_precision
def patch_contrastive_loss(embeddings: torch.Tensor, present: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """l_fpc (eq. 4). ``embeddings`` (B, K, D) organ patches, ``present`` (B, K) bool; in full precision."""
    b, k = present.shape
    sample, organ = torch.nonzero(present, as_tuple=True)
    per_anchor, has_positive = info_nce_terms(embeddings[sample, organ], organ, sample, temperature)
    if not has_positive.any():
        return embeddings.sum() * 0.0
    return (per_anchor * has_positive).sum() / sample[has_positive].unique().numel()
