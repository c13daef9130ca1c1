"""CISFA's weighted patch-wise contrastive loss (section 3.2, eqs. 2-4) and global contrastive loss (section 3.3,
eq. 5) (Hu et al., WACV 2023).

    L_pcl(l, u) = -log[ e^{u . u+ / tau} / sum_{v in F^l} e^{u . v / tau} ]                          (2)
    w_p(u) = w where u's patch is foreground, 1 where it is background, w = 2                           (3)
    L_gcl = -1/2t sum_i log[ e^{z_i . z_j(i) / tau} / sum_{k != i} e^{z_i . z_k / tau} ]              (5)

Patch contrast (as in CUT, which eq. 2 extends): at each generator layer l, S positions are drawn per image; the
query u is the translation's projected feature at a position, its positive u+ the input's at the same position,
and the keys v the input's features at the S positions of the same image (the positive among them, so the
fraction is a probability); vectors L2-normalised, tau = 0.2 (the paper's; the authors' code uses 0.07). Eq. 4's
expectation over u of w_p(u) L_pcl is the plain mean of the weighted terms. The label is downsampled to each
layer's resolution as a foreground mask (bilinear, then rounded: foreground where more than half of it is).

Global contrast: SimCLR's NT-Xent over the 2t projected encoder features of t (source, translation) pairs, each
pair the other's only positive, tau = 0.2. Details and what the authors' code does differently:
docs/methods/cisfa.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunet_uda.losses.precision import full_precision
from nnunet_uda.losses.sampling import uniform


def foreground_weights(labels: torch.Tensor, size, weight: float = 2.0, ignore_label: int | None = None
                       ) -> torch.Tensor:
    """Eq. 3 at a layer's resolution: (B, *size) ``weight`` where the foreground mask of ``labels`` (B, 1, *s)
    (classes > 0; ``ignore_label`` and negative values count as background) covers more than half of the layer's
    cell, else 1."""
    foreground = labels > 0
    if ignore_label is not None:
        foreground &= labels != ignore_label
    foreground = foreground.float()
    mode = "bilinear" if labels.ndim == 4 else "trilinear"
    resized = F.interpolate(foreground, size=tuple(size), mode=mode, align_corners=False)[:, 0]
    return torch.where(resized > 0.5, weight, 1.0)


def sample_positions(shape, count: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """``count`` distinct flat positions of a feature map of spatial ``shape``, drawn uniformly (all of them, in
    random order, when the map has fewer); the same positions serve every image of the batch, as in CUT."""
    n = 1
    for s in shape:
        n *= int(s)
    return torch.argsort(uniform(n, generator, device))[:count]


@full_precision
def patch_nce(queries: torch.Tensor, keys: torch.Tensor, weights: torch.Tensor | None = None,
              tau: float = 0.2) -> torch.Tensor:
    """Eqs. 2-4 at one layer: ``queries`` (B, S, D) the translation's projected features, ``keys`` (B, S, D) the
    input's at the same S positions (key s is query s's positive, the others its negatives); ``weights`` (B, S)
    w_p per position (None: 1). The mean of w_p(u) L_pcl(u) over the B x S queries, in full precision."""
    q, k = F.normalize(queries, dim=-1), F.normalize(keys.to(queries.dtype), dim=-1)
    logits = q @ k.transpose(1, 2) / tau  # (B, S, S): row s, column s is the positive
    terms = torch.logsumexp(logits, -1) - logits.diagonal(dim1=1, dim2=2)
    if weights is not None:
        terms = terms * weights.to(q.dtype)
    return terms.mean()


@full_precision
def global_contrast(first: torch.Tensor, second: torch.Tensor, tau: float = 0.2) -> torch.Tensor:
    """Eq. 5: NT-Xent over the pairs (``first[i]``, ``second[i]``), (t, D) each; in full precision.
    A single pair has no negatives: its terms are -log(1) = 0."""
    z = F.normalize(torch.cat((first, second.to(first.dtype))), dim=-1)
    t = first.shape[0]
    logits = (z @ z.T / tau).fill_diagonal_(float("-inf"))  # k != i
    partner = torch.cat((torch.arange(t, 2 * t), torch.arange(t))).to(z.device)
    return (torch.logsumexp(logits, 1) - logits[torch.arange(2 * t, device=z.device), partner]).mean()


def layered_patch_nce(source: list[torch.Tensor], translated: list[torch.Tensor], heads, labels: torch.Tensor,
                      patches: int = 256, weight: float = 2.0, tau: float = 0.2, ignore_label: int | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 4's patch term over the generator layers: per layer l, ``patches`` positions drawn once for the batch,
    the input's features ``source[l]`` (N, C_l, H_l, W_l) and the translation's ``translated[l]`` at them through
    the layer's projection head ``heads[l]``, weighted by eq. 3 from ``labels`` (N, 1, H, W) resized to the
    layer (as the authors' code resizes it, padding included); the mean over layers."""
    total = 0.0
    for f_source, f_translated, head in zip(source, translated, heads):
        size = f_source.shape[2:]
        position = sample_positions(size, patches, generator, f_source.device)
        n, c = f_source.shape[:2]
        keys, queries = (head(f.flatten(2)[:, :, position].transpose(1, 2).reshape(-1, c)).reshape(n, len(position), -1)
                         for f in (f_source, f_translated))
        weights = foreground_weights(labels, size, weight, ignore_label).flatten(1)[:, position]
        total = total + patch_nce(queries, keys, weights, tau)
    return total / len(source)
