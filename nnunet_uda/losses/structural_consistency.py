"""Contrastive structural consistency loss l_csc of AICL (section 2.3, eq. 5).

    l_csc = -E sum_k log [ phi(Y^k_m1, Y^k_m2) / sum_j phi(Y^k_m1, Y^j_m2) ]

Y^k_m is the image-scale soft prediction (softmax probability map) of organ k for an input of
modality m and phi the cosine similarity of two maps, so for every organ the same organ's map in
the other modality is the positive and the other organs' maps are the negatives. The expectation
runs over every ordered pair of samples of different domains in the batch (both directions, as the
fraction normalises over the second sample's organs), or over the pairs a batch names: the paper's
orbital and cardiac inputs are registered scans of one subject, and twin batches give one subject's
two modalities cropped and augmented together (:func:`twin_pairs`). Without pairs, nnU-Net's
batches hold patches of different cases, whose organ layouts agree only roughly. Organs
k and j range over the organs each sample shows (k in both, j in the second): an organ outside a
patch is no anatomical structure to contrast. Which organs a sample shows comes from its labels,
hand-drawn or pseudo (:func:`contrast_classes`), and from the prediction only for classes it has no
label for. Taken from the prediction alone, the set would let the network lower l_csc by predicting
fewer organs (one organ per sample gives l_csc = 0): trained so on the phantom, l_csc fell from
10.1 to 0.1 while the network dropped organs and l_sup rose from 0.03 to 0.78. A pair without a
shared organ, or a batch of one domain, contributes nothing. Probability maps are non-negative, so
phi lies in [0, 1]; ``eps`` keeps the logarithm finite where a map vanishes.

Neither form holds a map's amplitude. As printed, the positive's scale cancels in the ratio
wherever the negatives vanish: a target map confined inside its twin's organ, however faint or
small, scores 0, the same as the twin's own map, while every argmax there is lost to the
background. In the InfoNCE form the positive's phi itself must reach 1, but the cosine ignores
amplitude, so a faint copy still scores as the twin does. ``similarity="dice"`` replaces phi by
the soft Dice overlap 2 <a, b> / (|a|^2 + |b|^2), an adaptation that equals the cosine for maps of
equal norm, is below it otherwise, and is the Dice coefficient of two binary masks: a copy at
amplitude ratio c scores 2c / (1 + c^2) < 1, which the InfoNCE form penalises.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunet_uda.losses.precision import full_precision


def predicted_classes(probs: torch.Tensor) -> torch.Tensor:
    """(B, C - 1) bool: foreground classes that win the argmax somewhere in each sample."""
    winners = probs.argmax(1).flatten(1)
    present = torch.zeros(probs.shape[:2], dtype=torch.bool, device=probs.device).scatter_(1, winners, True)
    return present[:, 1:]


def contrast_classes(labels: torch.Tensor, annotated: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """(B, C - 1) bool: the foreground classes each sample shows. ``labels`` (B, 1, *s) label map
    (values 0..C-1, anything else such as nnU-Net's ignore label is skipped); ``annotated``
    (B, C) bool classes labeled in each sample (either source); a class without a label is
    taken from the prediction ``probs`` (B, C, *s) (:func:`predicted_classes`)."""
    b, c = annotated.shape
    values = labels.reshape(b, -1).long()
    values = torch.where((values >= 0) & (values < c), values, torch.zeros_like(values))  # unlabeled voxels
    shown = torch.zeros((b, c), dtype=torch.bool, device=labels.device).scatter_(1, values, True)[:, 1:]
    return torch.where(annotated[:, 1:], shown, predicted_classes(probs))


def fixed_maps(probs: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """``probs`` (B, C, *s) with the maps where ``fixed`` is true detached: ``fixed`` (B,) holds whole
    samples, (B, C) single classes of single samples. l_csc then moves only the other maps towards
    them."""
    return torch.where(fixed.view(*fixed.shape, *[1] * (probs.dim() - fixed.dim())), probs.detach(), probs)


SIMILARITIES = ("cosine", "dice")


def map_similarity(maps: torch.Tensor, similarity: str = "cosine") -> torch.Tensor:
    """(N, N) phi between the rows of ``maps`` (N, V): ``cosine`` (eq. 5) or soft ``dice``
    2 <a, b> / (|a|^2 + |b|^2) (module docstring)."""
    if similarity == "cosine":
        unit = F.normalize(maps, dim=1)
        return unit @ unit.T
    if similarity == "dice":
        squares = (maps * maps).sum(1)
        return 2 * (maps @ maps.T) / (squares[:, None] + squares[None, :]).clamp_min(1e-12)
    raise ValueError(f"unknown l_csc similarity {similarity!r}; choose one of {', '.join(SIMILARITIES)}")


@full_precision
def structural_consistency_loss(probs: torch.Tensor, domains: torch.Tensor, present: torch.Tensor,
                                temperature: float | None = None, pairs: torch.Tensor | None = None,
                                similarity: str = "cosine", eps: float = 1e-6) -> torch.Tensor:
    """l_csc (eq. 5). ``probs`` (B, K + 1, *s) softmax with background first; ``domains`` (B,)
    domain indices; ``present`` (B, K) bool organs to contrast (:func:`contrast_classes`).
    ``temperature`` None scores phi itself, as eq. 5 prints it; a number tau scores exp(phi / tau),
    the InfoNCE form of the loss the paper cites for it (van den Oord et al.) and of eq. 4.
    ``pairs`` (B, B) bool: the ordered sample pairs (m1, m2) to compare, e.g. the two modalities of one
    subject (:func:`twin_pairs`); default every pair of different domains. ``similarity``: phi,
    ``cosine`` as printed or ``dice`` (:func:`map_similarity`). In full precision."""
    b, k = present.shape
    maps = probs[:, 1:].float().reshape(b * k, -1)
    phi = map_similarity(maps, similarity).view(b, k, b, k).transpose(1, 2)  # (a, b, k, j)
    positive = torch.diagonal(phi, dim1=2, dim2=3)  # (a, b, k)
    if temperature is None:
        negatives = (phi * present[None, :, None, :]).sum(3)  # over the organs j of the second sample
        terms = torch.log(negatives + eps) - torch.log(positive + eps)
    else:
        logits = (phi / temperature).masked_fill(~present[None, :, None, :], -1e4)  # exp(-1e4) is 0, finitely
        terms = torch.logsumexp(logits, 3) - positive / temperature
    cross = domains[:, None] != domains[None, :]
    pairs = cross if pairs is None else pairs & cross
    organs = present[:, None, :] & present[None, :, :] & pairs[..., None]
    compared = organs.any(2)
    if not compared.any():
        return probs.sum() * 0.0
    return (terms * organs).sum() / compared.sum()


def twin_pairs(batch_size: int, n_pairs: int, device=None) -> torch.Tensor:
    """(B, B) bool pairs of a twin batch (:class:`~nnunet_uda.data.loader.TwinBatchDataLoader`): sample
    i < ``n_pairs`` and sample B - n_pairs + i are one subject's two modalities, in both orders."""
    pairs = torch.zeros((batch_size, batch_size), dtype=torch.bool, device=device)
    first = torch.arange(n_pairs, device=device)
    second = first + batch_size - n_pairs
    pairs[first, second] = True
    pairs[second, first] = True
    return pairs
