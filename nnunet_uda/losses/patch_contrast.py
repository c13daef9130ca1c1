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

#: stands in for -inf in masked log-sum-exps (keeps gradients finite where a set is empty)
MASKED = -1e4


def patch_contrastive_loss(embeddings: torch.Tensor, present: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """l_fpc (eq. 4). ``embeddings`` (B, K, D) organ patches, ``present`` (B, K) bool."""
    b, k = present.shape
    z = F.normalize(embeddings.float().flatten(0, 1), dim=1)
    logits = z @ z.T / temperature  # (N, N), N = B * K
    organ = torch.arange(k, device=z.device).repeat(b)
    sample = torch.arange(b, device=z.device).repeat_interleave(k)
    valid = present.flatten()
    both = valid[:, None] & valid[None, :]
    positive = both & (organ[:, None] == organ[None, :]) & (sample[:, None] != sample[None, :])
    negative = both & (organ[:, None] != organ[None, :])
    negatives = torch.logsumexp(logits.masked_fill(~negative, MASKED), 1, keepdim=True)
    terms = torch.logaddexp(logits, negatives) - logits  # -log of eq. 4's fraction, per (anchor, positive)
    per_anchor = (terms * positive).sum(1) / positive.sum(1).clamp_min(1)
    contributing = positive.any(1).view(b, k)
    if not contributing.any():
        return embeddings.sum() * 0.0
    return (per_anchor.view(b, k) * contributing).sum() / contributing.any(1).sum()
