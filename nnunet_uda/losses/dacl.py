"""Density-aware contrastive learning of DACL (Tang et al., AAAI 2025): feature density (eqs. 3-5), low-density
anchors (eq. 6), high-density positive keys and their centre (eqs. 7-8), negative keys, positiveness (eq. 9) and
the soft density-guided contrastive loss L_CL^soft (eq. 10).

    d_v = 1/|S| sum_{k in S} 1/k sum_{r in NN_k(v)} f_r . f_v     NN_k(v) within G_n u V_n    (3-5)
    M^n = the N_q features of V_n of lowest density                                           (6)
    P^{n,+} = the N_p+/2 densest of V_n and the N_p+/2 densest of G_n; p^n = their mean          (7-8)
    w_i = |M^n| softmax_i(m_i . p^n)                                                          (9)
    L^n = sum_i w_i l_i / sum_i w_i,  l_i = -log[e^{m_i.p^n/tau} / (e^{m_i.p^n/tau} + sum_j e^{m_i.p_j^-/tau})]

with features L2-normalised (the dots are cosines), V_n the batch's features of class n and G_n the class's
memory bank (FIFO, L = 1000). Where the paper is silent or ambiguous (reasons: docs/methods/dacl.md):

- eq. 10 as printed has no positive term in its denominator and w_i inside the log; the default form
  (``form="supcon"``) adds the positive to the denominator, as SupCon, which the paper names as its model, does,
  and applies w_i (detached) as the anchor's weight outside the log, the form whose optimum is Claim 1's
  s_i* = w_i / sum_k w_k. ``form="printed"`` is eq. 10 verbatim (w_i with its gradient);
- gamma_i (eq. 9) is 1 / |M^n|, so that the mean weight is 1 and equal cosines give the plain loss;
- the bank stores (feature, density) pairs as the paper says; bank keys are ranked by their stored density;
- negatives (N_p- per class) are drawn uniformly with replacement from the other classes' anchors, "from the
  anchors in the current batch"; the centre is detached (a target), anchors and negatives carry gradients;
- a query with fewer than k neighbours averages over those it has (density 0 without any);
- the loss averages over anchors (weighted) and over the classes with anchors, a centre and negatives, where the
  printed sums would scale with N_q and the class count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunet_uda.losses.precision import full_precision
from nnunet_uda.losses.sampling import sample_per_class, uniform
from nnunet_uda.memory import ClassMemoryBank

NEG_INF = float("-inf")


@full_precision
def knn_density(features: torch.Tensor, valid: torch.Tensor, bank: torch.Tensor, bank_valid: torch.Tensor,
                scales=(8, 16, 32)) -> torch.Tensor:
    """Eqs. 3-5: (C, n) density of each valid feature ``features`` (C, n, D) of class c (``valid`` (C, n)): the mean
    cosine similarity to its k nearest neighbours among the class's other valid batch features and its valid bank
    features ``bank`` (C, L, D) (``bank_valid`` (C, L)), averaged over the k of ``scales``. No gradient; in
    full precision."""
    with torch.no_grad():
        c, n, _ = features.shape
        f = F.normalize(features.float(), dim=-1)
        keys = torch.cat((F.normalize(bank.float(), dim=-1), f), 1)
        usable = torch.cat((bank_valid, valid), 1)[:, None, :].expand(c, n, keys.shape[1]).clone()
        own = torch.arange(n, device=features.device)
        usable[:, own, bank.shape[1] + own] = False  # not its own neighbour
        similarity = (f @ keys.transpose(1, 2)).masked_fill(~usable, NEG_INF)
        nearest = similarity.topk(min(max(scales), keys.shape[1]), dim=-1).values
        running = torch.where(torch.isfinite(nearest), nearest, 0.0).cumsum(-1)
        available = usable.sum(-1)
        density = torch.zeros((c, n), device=features.device)
        for k in scales:
            used = available.clamp(max=min(k, running.shape[-1]))
            total = running.gather(-1, (used - 1).clamp_min(0)[..., None])[..., 0]
            density += torch.where(used > 0, total / used.clamp_min(1), 0.0)
        return density / len(scales)


def extreme(scores: torch.Tensor, valid: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``scores`` (C, n), the positions of the ``k`` largest (or smallest) valid scores, with their
    validity (C, min(k, n)): a row with fewer than k valid entries has its last columns invalid."""
    k = min(k, scores.shape[1])
    fill = NEG_INF if largest else float("inf")
    index = scores.masked_fill(~valid, fill).topk(k, dim=1, largest=largest).indices
    return index, valid.gather(1, index)


def positive_centres(batch: torch.Tensor, batch_index: torch.Tensor, batch_valid: torch.Tensor,
                     bank: torch.Tensor | None = None, bank_index: torch.Tensor | None = None,
                     bank_valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8: (C, D) the normalised mean of the normalised positive keys chosen from ``batch`` (C, n, D) and
    ``bank`` (C, L, D) at ``*_index`` (C, k) where ``*_valid``; and (C,) whether a class has any key. Detached."""
    keys = [F.normalize(batch.detach().float().gather(1, _rows(batch_index, batch)), dim=-1)]
    chosen = [batch_valid]
    if bank is not None:
        keys.append(F.normalize(bank.float().gather(1, _rows(bank_index, bank)), dim=-1))
        chosen.append(bank_valid)
    keys, chosen = torch.cat(keys, 1), torch.cat(chosen, 1)
    total = (keys * chosen[..., None]).sum(1)
    return F.normalize(total, dim=-1), chosen.any(1)


def _rows(index: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    return index[..., None].expand(*index.shape, table.shape[-1])


def positiveness(anchors: torch.Tensor, valid: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Eq. 9: (C, N_q) w_i = |M^n| softmax over the valid anchors of class n of m_i . p^n (identity l_1, l_2;
    gamma_i = 1 / |M^n|); 0 at invalid anchors. Differentiable in ``anchors``."""
    logits = (F.normalize(anchors, dim=-1) * centres[:, None]).sum(-1).masked_fill(~valid, NEG_INF)
    weights = torch.softmax(logits, 1) * valid.sum(1, keepdim=True)
    return torch.nan_to_num(weights, nan=0.0)


def draw_negatives(valid: torch.Tensor, count: int, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each class n, ``count`` positions into the flattened anchors (C * N_q) of the other classes, drawn
    uniformly with replacement among the valid ones (``valid`` (C, N_q)); and (C,) whether any exists."""
    c, q = valid.shape
    owner = torch.arange(c, device=valid.device).repeat_interleave(q)
    allowed = valid.flatten()[None, :] & (owner[None, :] != torch.arange(c, device=valid.device)[:, None])
    exists = allowed.any(1)
    cumulative = allowed.long().cumsum(1)  # the j-th allowed position is where cumulative first reaches j + 1
    draw = (uniform((c, count), generator, valid.device) * cumulative[:, -1:]).long()
    index = torch.searchsorted(cumulative, draw + 1).clamp_max(c * q - 1)
    return index, exists


@full_precision
def soft_contrast(anchors: torch.Tensor, valid: torch.Tensor, centres: torch.Tensor, centre_valid: torch.Tensor,
                  negatives: torch.Tensor, negative_valid: torch.Tensor, tau: float = 0.4,
                  weights: torch.Tensor | None = None, form: str = "supcon") -> torch.Tensor:
    """Eq. 10 (module docstring). ``anchors`` (C, N_q, D) with ``valid`` (C, N_q); ``centres`` (C, D) with
    ``centre_valid`` (C,); ``negatives`` (C, N_p-, D) with ``negative_valid`` (C,); ``weights`` (C, N_q) the w_i
    of eq. 9 (None: 1). Mean over the classes with anchors, a centre and negatives; without any, a zero
    connected to ``anchors``. In full precision (:mod:`~nnunet_uda.losses.precision`)."""
    if form not in ("supcon", "printed"):
        raise ValueError(f"form must be 'supcon' or 'printed', not {form!r}")
    m = F.normalize(anchors, dim=-1)
    tiny = torch.finfo(m.dtype).tiny
    positive = (m * F.normalize(centres.to(m.dtype), dim=-1)[:, None]).sum(-1) / tau  # (C, N_q)
    negative = torch.einsum("cqd,cpd->cqp", m, F.normalize(negatives.to(m.dtype), dim=-1)) / tau
    w = torch.ones_like(positive) if weights is None else weights.to(m.dtype)
    if form == "supcon":
        terms = torch.logsumexp(torch.cat((positive[..., None], negative), -1), -1) - positive
        w = w.detach() * valid
        per_class = (w * terms).sum(1) / w.sum(1).clamp_min(tiny)
    else:
        terms = torch.logsumexp(negative, -1) - positive - torch.log(w.clamp_min(tiny))
        per_class = torch.where(valid, terms, 0).sum(1) / valid.sum(1).clamp_min(1)
    used = valid.any(1) & centre_valid & negative_valid
    if not bool(used.any()):
        return anchors.sum() * 0.0
    return per_class[used].mean()


class DensityAwareContrast:
    """L_CL^soft with eqs. 3-9's selection and a class memory bank of (feature, density) pairs; its settings are
    the rows of the paper's Table 2:

    - ``sampling``: "density" (eqs. 6-7) or "random" (plain contrast, PCL: random anchors and keys);
    - ``scales``: the k of the neighbour graphs, one (single scale, DA) or several (MS, eqs. 4-5);
    - ``use_bank``: density within bank and batch, half the keys from the bank (Bank); else the batch alone;
    - ``use_positiveness``: w_i of eq. 9, else 1.

    Called once per step with the features of both networks concatenated; the class's candidates are bounded
    (``candidates`` per class drawn at random from the step's features), and ``bank_push`` of them per class
    enter the bank after the loss is computed (so density is "feature-to-bank": against earlier steps).
    Every DDP rank must call it each step (the bank gathers).
    """

    def __init__(self, num_classes: int, dim: int, bank_size: int = 1000, candidates: int = 1024,
                 anchors: int = 256, positive_keys: int = 512, negative_keys: int = 512, tau: float = 0.4,
                 scales=(8, 16, 32), sampling: str = "density", use_bank: bool = True,
                 use_positiveness: bool = True, form: str = "supcon", bank_push: int = 64):
        if sampling not in ("density", "random"):
            raise ValueError(f"sampling must be 'density' or 'random', not {sampling!r}")
        self.num_classes, self.dim = num_classes, dim
        self.candidates, self.anchors, self.tau, self.scales = candidates, anchors, tau, tuple(scales)
        self.positive_keys, self.negative_keys, self.bank_push = positive_keys, negative_keys, bank_push
        self.sampling, self.use_bank, self.use_positiveness, self.form = sampling, use_bank, use_positiveness, form
        self.bank = ClassMemoryBank(num_classes, bank_size, dim + 1)  # the feature, then its density

    def __call__(self, features: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """``features`` (N, D) projection-head features; ``labels`` (N,) their classes (ground truth, or
        pseudo-labels where reliable; values outside 0 .. C - 1 are skipped)."""
        c, device = self.num_classes, features.device
        if self.bank.device != device:
            self.bank.to(device)
        if features.shape[0] == 0:
            if self.use_bank:  # every rank pushes each step (the bank gathers)
                self.bank.push(features.detach().new_zeros((0, self.dim + 1)), labels.new_zeros(0))
            return features.sum() * 0.0
        index, valid = sample_per_class(labels.long(), c, self.candidates, generator)  # (C, n)
        batch = features[index]  # (C, n, D)
        stored = torch.arange(self.bank.size, device=device)[None, :] < self.bank.count[:, None]
        memory, memory_density = self.bank.features[..., :-1], self.bank.features[..., -1]
        if self.use_bank:
            density = knn_density(batch, valid, memory, stored, self.scales)
        else:
            density = knn_density(batch, valid, memory[:, :0], stored[:, :0], self.scales)
        if self.sampling == "random":
            density = uniform(density.shape, generator, device)
        anchor_index, anchor_valid = extreme(density, valid, self.anchors, largest=False)  # eq. 6
        half = self.positive_keys // 2 if self.use_bank else self.positive_keys
        key_index, key_valid = extreme(density, valid, half, largest=True)  # eq. 7, batch
        bank_keys = ()
        if self.use_bank:
            bank_keys = (memory, *extreme(memory_density, stored, self.positive_keys - half, largest=True))
        centres, centre_valid = positive_centres(batch, key_index, key_valid, *bank_keys)  # eq. 8
        anchors = batch.gather(1, _rows(anchor_index, batch))
        negative_index, negative_valid = draw_negatives(anchor_valid, self.negative_keys, generator)
        negatives = anchors.flatten(0, 1)[negative_index]
        weights = positiveness(anchors, anchor_valid, centres) if self.use_positiveness else None  # eq. 9
        loss = soft_contrast(anchors, anchor_valid, centres, centre_valid, negatives, negative_valid, self.tau,
                             weights, self.form)
        if self.use_bank:
            self.remember(batch, valid, density, generator)
        return loss

    def remember(self, batch: torch.Tensor, valid: torch.Tensor, density: torch.Tensor,
                 generator: torch.Generator | None) -> None:
        """Push ``bank_push`` random valid candidates per class with their densities (FIFO)."""
        index, chosen = extreme(uniform(valid.shape, generator, valid.device), valid, self.bank_push, True)
        features = batch.detach().float().gather(1, _rows(index, batch))
        rows = torch.cat((features, density.gather(1, index)[..., None]), -1)
        classes = torch.arange(self.num_classes, device=valid.device)[:, None].expand_as(chosen)
        self.bank.push(rows[chosen], classes[chosen])

    def state_dict(self) -> dict:
        return self.bank.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.bank.load_state_dict(state)
