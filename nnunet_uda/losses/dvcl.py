"""Distance-aware voxel-wise contrastive loss L_dvcl of DVCL (section 3.4, eqs. 11-19).

For a query m (an unreliable voxel) and a queue of candidates (unreliable voxels of earlier steps):

    C_m^K  = the K candidates of highest cos(r_m, r_n), D_m^K' = the K' of lowest              (12)
    A_mn   = 1 if m is also among n's K nearest (a relevant neighbour, NPS), r otherwise      (13-14)
    E(m)   = {n in C_m^K : m among n's U nearest}; m is left out when E(m) is empty (QDS)      (15)
    psi_m  = -sum_{n in C} A_mn p_m.p_n + sum_{k in D} p_m.p_k + (K - K') (log |U_R| + 1)     (18)
    L_dvcl = mean of psi_m over the kept queries                                              (19)

p are softmax prediction vectors (eq. 16: the likelihoods are those of the segmentation head), so
the gradient flows through the queries' p_m only; the features choose neighbours and outsiders.
"n's K nearest" is taken in the set of the other candidates plus m: m qualifies when
cos(n, m) >= the K-th largest cosine of n to the other candidates (ties favour m; always, with
fewer than K others). With fewer than K (K') candidates, C (D) holds all of them and the constant
of eq. 18 uses min(K, L) - min(K', L). The candidate graph is L x L (L^2 float32: 64 MiB at
L = 4096), fine for queues of a few thousand.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nnunet_uda.losses.precision import full_precision
from nnunet_uda.losses.sampling import permutation
from nnunet_uda.distributed import distributed_world_size
from nnunet_uda.memory import FeatureQueue


def kth_similarity(similarity: torch.Tensor, k: int) -> torch.Tensor:
    """(L,) the k-th largest entry of each row of the candidates' cosine matrix ``similarity`` (L, L),
    the diagonal (self) excluded; -inf where a row has fewer than k others."""
    n = similarity.shape[0]
    if k > n - 1 or k < 1:
        fill = float("-inf") if k >= 1 else float("inf")
        return similarity.new_full((n,), fill)
    others = similarity.masked_fill(torch.eye(n, dtype=torch.bool, device=similarity.device), float("-inf"))
    return torch.topk(others, k, dim=1).values[:, -1]


@full_precision
def dvcl_loss(query_features: torch.Tensor, query_probs: torch.Tensor, candidate_features: torch.Tensor,
              candidate_probs: torch.Tensor, k: int, k_far: int, u: int, r: float = 0.5, nps: bool = True,
              qds: bool = True, n_unreliable: int | None = None) -> torch.Tensor:
    """L_dvcl (eqs. 12-19). Queries: ``query_features`` (Q, d), ``query_probs`` (Q, C) (with grad);
    candidates: ``candidate_features`` (L, d), ``candidate_probs`` (L, C), used as given (the queue is
    detached). ``k``, ``k_far``, ``u``: K, K', U; ``r``: affinity of ordinary neighbours; ``nps``,
    ``qds``: the two strategies (off: every affinity 1, every query kept); ``n_unreliable``: |U_R| of
    eq. 18 (default Q). A zero connected to ``query_probs`` when no query is kept. In full precision
    (:mod:`~nnunet_uda.losses.precision`: half-precision cosines would tie in the rankings)."""
    q, l = query_features.shape[0], candidate_features.shape[0]
    if q == 0 or l == 0:
        return query_probs.sum() * 0.0
    queries = F.normalize(query_features.detach(), dim=1)
    candidates = F.normalize(candidate_features.detach().to(queries.dtype), dim=1)
    to_candidates = queries @ candidates.T  # (Q, L)
    kk, kf = min(k, l), min(k_far, l)
    cosine, near = torch.topk(to_candidates, kk, dim=1)  # C_m^K (eq. 12)
    far = torch.topk(to_candidates, kf, dim=1, largest=False).indices  # D_m^K'

    if nps or qds:
        between = candidates @ candidates.T  # (L, L)
    relevant = cosine >= kth_similarity(between, k)[near] if nps else torch.ones_like(near, dtype=torch.bool)  # eq. 13
    keep = (cosine >= kth_similarity(between, u)[near]).any(1) if qds else torch.ones(q, dtype=torch.bool,
                                                                                       device=cosine.device)
    if not bool(keep.any()):
        return query_probs.sum() * 0.0

    inner = query_probs @ candidate_probs.to(query_probs.dtype).T  # p_m . p_n, (Q, L)
    affinity = torch.full_like(inner[:, :kk], r).masked_fill(relevant, 1.0)  # eq. 14
    n_u = max(q if n_unreliable is None else int(n_unreliable), 1)
    psi = (-(affinity * inner.gather(1, near)).sum(1) + inner.gather(1, far).sum(1)
           + (kk - kf) * (math.log(n_u) + 1))  # eq. 18
    return psi[keep].mean()  # eq. 19


class DistanceAwareContrast:
    """L_dvcl over a :class:`FeatureQueue` of unreliable voxels.

    Each call draws ``queries`` of this step's unreliable voxels as queries, scores them against the
    queue as it was before this step, then pushes the voxels (a random subset of at most
    ``queue_size`` over all DDP ranks) into the queue; every DDP rank must call it each step. The
    paper gives none of these settings; the defaults and why:

    - ``k = k_far = 8``: K = K' makes eq. 18's constant vanish, so the bound equals eq. 17 exactly;
      8 neighbours fit inside the few dozen queue entries a small organ's boundary leaves;
    - ``u = 64``: "U is significantly larger than K" (8 x), still well below the queue;
    - ``queue_size = 4096``: a few hundred unreliable voxels per class of a 14-class task, with an
      L x L candidate graph of 64 MiB;
    - ``queries = 1024``: the Q x L similarity stays a quarter of the candidate graph, and the mean of
      eq. 19 over 1024 random queries is a low-variance estimate of the mean over U_R.
    """

    queue_size = 4096
    queries = 1024
    k = 8
    k_far = 8
    u = 64
    r = 0.5

    def __init__(self, classes: int, dim: int, queue_size: int = queue_size, queries: int = queries, k: int = k,
                 k_far: int = k_far, u: int = u, r: float = r, nps: bool = True, qds: bool = True):
        self.classes, self.dim = classes, dim
        self.queue_size, self.queries, self.k, self.k_far, self.u, self.r = queue_size, queries, k, k_far, u, r
        self.nps, self.qds = nps, qds
        self.queue = FeatureQueue(queue_size, dim, classes)

    def __call__(self, features: torch.Tensor, probs: torch.Tensor,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """``features`` (N, d) projection-head features and ``probs`` (N, C) softmax (with grad) of this
        step's unreliable voxels, both networks."""
        device = features.device
        if self.queue.device != device:
            self.queue.to(device)
        candidate_features, candidate_probs = self.queue.contents()
        n = features.shape[0]
        order = permutation(n, generator, device)
        query = order[:self.queries]
        loss = dvcl_loss(features[query], probs[query], candidate_features, candidate_probs, self.k, self.k_far,
                         self.u, self.r, self.nps, self.qds, n_unreliable=n)
        pushed = order[:math.ceil(self.queue_size / distributed_world_size())]
        self.queue.push(features.detach()[pushed], probs.detach()[pushed])
        return loss

    def state_dict(self) -> dict:
        return self.queue.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.queue.load_state_dict(state)
