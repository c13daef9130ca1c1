"""DVCL's ESM (eqs. 4-6), memory bank and queue, L_hqcl (eqs. 7-10) and L_dvcl (eqs. 11-19) against
direct loop transcriptions, edge cases, gradients, and the DDP gather on two gloo processes."""
import math
from collections import deque

import pytest
import torch

from conftest import on_gloo_ranks
from nnunet_uda.distributed import gather_rows
from nnunet_uda.losses.dvcl import DistanceAwareContrast, dvcl_loss
from nnunet_uda.losses.entropy_selection import entropy_split
from nnunet_uda.losses.hqcl import HighQualityContrast, hqcl_loss
from nnunet_uda.losses.sampling import sample_per_class
from nnunet_uda.memory import ClassMemoryBank, FeatureQueue


def cosine(a, b):
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b)) / (max(na, 1e-12) * max(nb, 1e-12))


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


# ---------------------------------------------------------------- ESM (eqs. 4-6)

def loop_entropy_split(probs, alpha):
    b, c = probs.shape[:2]
    flat = probs.reshape(b, c, -1).tolist()
    entropy = [[-sum(p * math.log(p) for p in (flat[i][k][j] for k in range(c)) if p > 0)
                for j in range(len(flat[i][0]))] for i in range(b)]
    values = [e for row in entropy for e in row]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((e - mean) ** 2 for e in values) / len(values))
    tau = mean + alpha * std
    return entropy, [[e < tau for e in row] for row in entropy], [[e > tau for e in row] for row in entropy]


@pytest.mark.parametrize("alpha", [0.5, 0.0, 1.5])
def test_entropy_split_matches_the_loop_transcription(alpha):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(2, 4, 3, 4, 5, generator=g, dtype=torch.float64), 1)
    probs[0, :, 0, 0, 0] = torch.tensor([1.0, 0, 0, 0])  # p log p = 0 at p = 0
    entropy, reliable, unreliable = entropy_split(probs, alpha)
    e, r, u = loop_entropy_split(probs, alpha)
    assert torch.allclose(entropy.reshape(2, -1), torch.tensor(e, dtype=torch.float64), atol=1e-12)
    assert reliable.reshape(2, -1).tolist() == r and unreliable.reshape(2, -1).tolist() == u
    assert entropy[0, 0, 0, 0] == 0 and reliable.any() and unreliable.any()


def test_entropy_split_is_detached_and_float32_for_half_inputs():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    for dtype in (torch.float16, torch.bfloat16):
        probs = torch.softmax(logits, 1).to(dtype)
        entropy, reliable, unreliable = entropy_split(probs)
        assert entropy.dtype == torch.float32 and not entropy.requires_grad
        assert reliable.dtype == unreliable.dtype == torch.bool and not (reliable & unreliable).any()
        expected = entropy_split(probs.float())
        assert torch.equal(entropy, expected[0]) and torch.equal(reliable, expected[1])


def test_entropy_split_of_equal_entropies_selects_nothing():
    """Uniform predictions: every voxel sits exactly at tau_e, on neither side of eq. 5."""
    entropy, reliable, unreliable = entropy_split(torch.full((2, 5, 7, 9, 11), 0.2))
    assert torch.allclose(entropy, torch.tensor(math.log(5))) and not reliable.any() and not unreliable.any()


def test_entropy_split_of_an_empty_batch_is_empty():
    entropy, reliable, unreliable = entropy_split(torch.zeros(0, 3, 4, 4, 4))
    assert entropy.shape == reliable.shape == unreliable.shape == (0, 4, 4, 4)
    assert reliable.dtype == unreliable.dtype == torch.bool


# ---------------------------------------------------------------- memory bank and queue

def test_bank_is_a_fifo_per_class_with_overflow():
    g = torch.Generator().manual_seed(1)
    bank, size = ClassMemoryBank(3, 4, 2), 4
    reference = [deque(maxlen=size) for _ in range(3)]
    for n in (3, 0, 6, 11, 1, 5):  # 11 rows of one push overflow a class
        features = torch.randn(n, 2, generator=g)
        labels = torch.randint(-1, 4, (n,), generator=g)  # -1 and 3 are no class
        bank.push(features, labels)
        for f, c in zip(features.tolist(), labels.tolist()):
            if 0 <= c < 3:
                reference[c].append(f)
        for c in range(3):
            assert bank.ordered(c).tolist() == list(reference[c])
            assert int(bank.count[c]) == len(reference[c])
    centres, valid = bank.centres()
    for c in range(3):
        assert valid[c] == bool(reference[c])
        expected = [sum(f[j] for f in reference[c]) / len(reference[c]) for j in range(2)] if reference[c] else [0, 0]
        assert torch.allclose(centres[c], torch.tensor(expected), atol=1e-6)


def test_bank_keeps_the_last_rows_of_a_class_in_one_push_and_detaches():
    bank = ClassMemoryBank(2, 3, 1)
    features = torch.arange(7.0).view(7, 1).requires_grad_()
    bank.push(features * 1, torch.tensor([0, 0, 1, 0, 0, 0, 0]))
    assert bank.ordered(0).flatten().tolist() == [4, 5, 6] and bank.ordered(1).flatten().tolist() == [2]
    assert bank.count.tolist() == [3, 1] and bank.head.tolist() == [0, 1] and not bank.features.requires_grad
    centres, valid = ClassMemoryBank(2, 3, 1).centres()
    assert valid.tolist() == [False, False] and torch.equal(centres, torch.zeros(2, 1))


def test_bank_and_queue_state_dicts_round_trip_exactly():
    g = torch.Generator().manual_seed(2)
    bank, queue = ClassMemoryBank(3, 5, 4), FeatureQueue(7, 4, 3)
    for _ in range(3):
        bank.push(torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (6,), generator=g))
        queue.push(torch.randn(4, 4, generator=g), torch.rand(4, 3, generator=g))
    bank_state, queue_state = bank.state_dict(), queue.state_dict()
    restored_bank, restored_queue = ClassMemoryBank(3, 5, 4), FeatureQueue(7, 4, 3)
    restored_bank.load_state_dict(bank_state)
    restored_queue.load_state_dict(queue_state)
    more = torch.randn(9, 4, generator=g), torch.randint(0, 3, (9,), generator=g), torch.rand(9, 3, generator=g)
    for b, q in ((bank, queue), (restored_bank, restored_queue)):
        b.push(more[0], more[1])
        q.push(more[0], more[2])
    for key in ("features", "count", "head"):
        assert torch.equal(getattr(bank, key), getattr(restored_bank, key))
    assert all(torch.equal(a, b) for a, b in zip(queue.contents(), restored_queue.contents()))
    assert (queue.count, queue.head) == (restored_queue.count, restored_queue.head)
    bank_state["features"][0] = 99  # the state is a copy, not a view
    assert not (bank.features == 99).any()
    with pytest.raises(ValueError, match="size, dim = 3, 6, 4"):
        ClassMemoryBank(3, 6, 4).load_state_dict(restored_bank.state_dict())
    with pytest.raises(ValueError, match="size, dim, classes = 7, 4, 2"):
        FeatureQueue(7, 4, 2).load_state_dict(queue_state)


def test_queue_is_a_fifo_with_overflow():
    g = torch.Generator().manual_seed(3)
    queue, reference = FeatureQueue(5, 2, 3), deque(maxlen=5)
    features, probs = queue.contents()
    assert features.shape == (0, 2) and probs.shape == (0, 3)
    for n in (2, 0, 2, 9, 1):
        f, p = torch.randn(n, 2, generator=g), torch.rand(n, 3, generator=g)
        queue.push(f.requires_grad_(), p)
        reference.extend(zip(f.tolist(), p.tolist()))
        features, probs = queue.contents()
        assert features.tolist() == [x for x, _ in reference] and probs.tolist() == [y for _, y in reference]
        assert len(queue) == len(reference) and not features.requires_grad


def _gather_worker(rank):
    bank, queue = ClassMemoryBank(3, 4, 2), FeatureQueue(6, 2, 3)
    for step, n in enumerate(((2, 5), (0, 3), (4, 0))):  # different row counts, some empty
        features, labels, probs = _rank_rows(rank, step, n[rank])
        bank.push(features, labels)
        queue.push(features, probs)
    mask = gather_rows(torch.tensor([True, False]) if rank == 0 else torch.tensor([False]))
    return {"bank": bank.state_dict(), "queue": queue.state_dict(), "mask": mask}


def _rank_rows(rank, step, n):
    g = torch.Generator().manual_seed(100 * rank + step)
    return torch.randn(n, 2, generator=g), torch.randint(0, 3, (n,), generator=g), torch.rand(n, 3, generator=g)


def _esm_worker(rank):
    return [entropy_split(_rank_probs(rank, step, n[rank]))[1:] for step, n in enumerate(((2, 1), (1, 0)))]


def _rank_probs(rank, step, n):
    g = torch.Generator().manual_seed(10 * rank + step)
    return torch.softmax(2 * torch.randn(n, 3, 4, 4, 4, generator=g), 1)


def test_the_entropy_threshold_pools_the_voxels_of_two_gloo_ranks(tmp_path):
    """Eq. 6 over the global batch: each rank's masks are those of its samples in the one-process split of the
    concatenated batch, also where a rank holds no sample."""
    ranks = on_gloo_ranks(_esm_worker, tmp_path)
    for step, n in enumerate(((2, 1), (1, 0))):
        _, reliable, unreliable = entropy_split(torch.cat([_rank_probs(r, step, n[r]) for r in range(2)]))
        assert torch.equal(torch.cat([ranks[r][step][0] for r in range(2)]), reliable)
        assert torch.equal(torch.cat([ranks[r][step][1] for r in range(2)]), unreliable)
        own = entropy_split(_rank_probs(0, step, n[0]))[1]
        assert step == 1 or not torch.equal(own, reliable[:n[0]])  # a rank's own threshold differs


def test_bank_and_queue_gather_across_two_gloo_ranks(tmp_path):
    states = on_gloo_ranks(_gather_worker, tmp_path)
    bank, queue = ClassMemoryBank(3, 4, 2), FeatureQueue(6, 2, 3)
    for step, n in enumerate(((2, 5), (0, 3), (4, 0))):
        rows = [_rank_rows(rank, step, n[rank]) for rank in range(2)]
        features, labels, probs = (torch.cat(parts) for parts in zip(*rows))
        bank.push(features, labels)
        queue.push(features, probs)
    for state in states:
        for key, value in bank.state_dict().items():
            assert torch.equal(state["bank"][key], value)
        for key, value in queue.state_dict().items():
            assert torch.equal(state["queue"][key], value) if torch.is_tensor(value) else state["queue"][key] == value
        assert state["mask"].tolist() == [True, False, False]
    assert int(bank.count.sum()) < 14 and queue.count == 6  # 14 rows pushed: both overflowed


# ---------------------------------------------------------------- HqCL (eqs. 7-10)

def test_sample_per_class_draws_without_replacement_from_each_class():
    g = torch.Generator().manual_seed(4)
    labels = torch.tensor([2, 0, 255, 2, 2, 0, 2, -1, 2, 1])
    for _ in range(20):
        index, valid = sample_per_class(labels, 4, 3, g)
        assert valid.tolist() == [[True, True, False], [True, False, False], [True, True, True], [False] * 3]
        for c in range(4):
            drawn = index[c][valid[c]].tolist()
            assert len(set(drawn)) == len(drawn) and all(labels[i] == c for i in drawn)
    counts = torch.zeros(10)
    for _ in range(3000):
        index, valid = sample_per_class(labels, 4, 3, g)
        counts.index_add_(0, index[2], torch.ones(3))
    frequency = counts[[0, 3, 4, 6, 8]] / 3000  # 3 of the 5 positions of class 2: 0.6 each
    assert torch.allclose(frequency, torch.full((5,), 0.6), atol=0.04)
    index, valid = sample_per_class(torch.zeros(0, dtype=torch.long), 3, 2)
    assert index.shape == (3, 2) and not valid.any()


def loop_hqcl(anchors, anchor_valid, centres, centre_valid, negatives, negative_valid, sigma):
    """1/|classes present| sum_c -1/M_c sum_m log[Phi(r_cm, P_c) / (Phi(r_cm, P_c) + sum_n Phi(r_cm, r-_cmn))]."""
    per_class = []
    for c in range(anchors.shape[0]):
        members = [m for m in range(anchors.shape[1]) if anchor_valid[c, m]]
        if not members or not centre_valid[c]:
            continue
        total = 0.0
        for m in members:
            a = anchors[c, m].tolist()
            positive = math.exp(cosine(a, centres[c].tolist()) / sigma)
            rest = sum(math.exp(cosine(a, negatives[c, m, n].tolist()) / sigma)
                       for n in range(negatives.shape[2]) if negative_valid[c, m, n])
            total += -math.log(positive / (positive + rest))
        per_class.append(total / len(members))
    return sum(per_class) / len(per_class)


@pytest.mark.parametrize("sigma", [1.0, 0.2])
def test_hqcl_loss_matches_the_loop_transcription(sigma):
    g = torch.Generator().manual_seed(5)
    c, m, n, d = 4, 6, 5, 3
    anchors = torch.randn(c, m, d, generator=g, dtype=torch.float64, requires_grad=True)
    anchor_valid = torch.rand(c, m, generator=g) > 0.3
    anchor_valid[2] = False  # a class without anchors
    anchor_valid[0, 0] = True
    centres = torch.randn(c, d, generator=g, dtype=torch.float64)
    centre_valid = torch.tensor([True, True, True, False])  # a class without a centre
    negatives = torch.randn(c, m, n, d, generator=g, dtype=torch.float64, requires_grad=True)
    negative_valid = torch.rand(c, m, n, generator=g) > 0.4
    negative_valid[0, 0] = False  # an anchor without negatives
    loss = hqcl_loss(anchors, anchor_valid, centres, centre_valid, negatives, negative_valid, sigma)
    expected = loop_hqcl(anchors, anchor_valid, centres, centre_valid, negatives, negative_valid, sigma)
    assert loss.dtype == torch.float64 and math.isclose(loss.item(), expected, rel_tol=1e-9)
    loss.backward()
    scored = anchor_valid & centre_valid[:, None]
    assert torch.isfinite(anchors.grad).all() and anchors.grad[scored & negative_valid.any(2)].abs().sum(1).min() > 0
    assert anchors.grad[0, 0].abs().sum() == 0  # without negatives its term is log(1)
    assert anchors.grad[~anchor_valid].abs().sum() == 0 and anchors.grad[3].abs().sum() == 0
    assert negatives.grad[~negative_valid].abs().sum() == 0 and negatives.grad.abs().sum() > 0


def test_hqcl_and_dvcl_losses_ignore_autocast():
    """Inside a bfloat16 autocast region (nnU-Net computes its losses in one) both losses still
    compute in float32."""
    g = torch.Generator().manual_seed(14)
    hqcl_args = (torch.randn(3, 4, 8, generator=g), torch.ones(3, 4, dtype=torch.bool), torch.randn(3, 8, generator=g),
                 torch.ones(3, dtype=torch.bool), torch.randn(3, 4, 5, 8, generator=g),
                 torch.ones(3, 4, 5, dtype=torch.bool))
    dvcl_args = [x.float() for x in dvcl_inputs(15, q=40, big_l=200, d=16)]
    plain = hqcl_loss(*hqcl_args, sigma=0.1), dvcl_loss(*dvcl_args, 4, 4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = hqcl_loss(*hqcl_args, sigma=0.1), dvcl_loss(*dvcl_args, 4, 4, 16)
    assert all(a.dtype == torch.float32 and a.item() == b.item() for a, b in zip(autocast, plain))


def test_hqcl_loss_edge_cases_are_finite_and_connected():
    anchors = torch.randn(3, 4, 5, requires_grad=True)
    negatives = torch.randn(3, 4, 2, 5, requires_grad=True)
    everything = torch.ones(3, 4, dtype=torch.bool), torch.ones(3, dtype=torch.bool)
    none = torch.zeros(3, 4, 2, dtype=torch.bool)
    no_negatives = hqcl_loss(anchors, *everything[:1], torch.randn(3, 5), everything[1], negatives, none)
    assert no_negatives.item() == pytest.approx(0.0, abs=1e-7)  # log(1) per anchor
    for anchor_valid, centre_valid in ((torch.zeros(3, 4, dtype=torch.bool), everything[1]),
                                       (everything[0], torch.zeros(3, dtype=torch.bool))):
        loss = hqcl_loss(anchors, anchor_valid, torch.zeros(3, 5), centre_valid, negatives, ~none)
        assert loss.item() == 0.0 and loss.grad_fn is not None
        loss.backward()
        assert torch.isfinite(anchors.grad).all()


def loop_hqcl_step(features, labels, predicted, labeled, reliable, num_classes, sigma, stored):
    """Eqs. 7-10 when every anchor is drawn (M >= |R_c|) and every G_c holds at most one voxel (so N
    draws with replacement are that voxel); ``stored``: per class the bank's anchors of earlier steps."""
    f = features.tolist()
    per_class = []
    anchors_of = [[j for j in range(len(f)) if 0 <= labels[j] < num_classes and labels[j] == c
                   and ((labeled[j] and predicted[j] == c) or (not labeled[j] and reliable[j]))]
                  for c in range(num_classes)]
    for c in range(num_classes):
        stored[c].extend(f[j] for j in anchors_of[c])
    for c in range(num_classes):
        negatives = [j for j in range(len(f)) if labeled[j] and predicted[j] == c and labels[j] != c
                     and 0 <= labels[j] < num_classes]
        if not anchors_of[c] or not stored[c]:
            continue
        centre = [sum(x[i] for x in stored[c]) / len(stored[c]) for i in range(len(f[0]))]
        total = 0.0
        for j in anchors_of[c]:
            positive = math.exp(cosine(f[j], centre) / sigma)
            rest = sum(50 * math.exp(cosine(f[j], f[k]) / sigma) for k in negatives)
            total += -math.log(positive / (positive + rest))
        per_class.append(total / len(anchors_of[c]))
    return sum(per_class) / len(per_class) if per_class else 0.0


def test_high_quality_contrast_matches_the_loop_transcription_over_two_steps():
    """Labeled voxels: class 0 (one predicted 1: the negative of class 1), class 1 (one predicted 2: the
    negative of class 2; one predicted 4: the negative of class 4, which never has an anchor), one
    ignore-labeled voxel; unlabeled voxels, reliable or not. Class 3 has anchors from the second step."""
    g = torch.Generator().manual_seed(6)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 255, 2, 0, 1, 2, 3, 3])
    predicted = torch.tensor([0, 0, 1, 1, 2, 4, 1, 0, 2, 1, 1, 2, 3, 0])
    labeled = torch.tensor([True] * 9 + [False] * 5)
    reliable = torch.tensor([False] * 9 + [True, False, True, False, False])
    hqcl = HighQualityContrast(5, 3, bank_size=64, anchors=16, negatives=50, sigma=0.5)
    stored = [[] for _ in range(5)]
    for step in range(2):
        features = torch.randn(14, 3, generator=g, dtype=torch.float64, requires_grad=True)
        step_reliable = reliable if step == 0 else reliable | (labels == 3)  # class 3 appears in the second step
        loss = hqcl(features, labels, predicted, labeled, step_reliable, generator=g)
        expected = loop_hqcl_step(features, labels, predicted, labeled, step_reliable, 5, 0.5, stored)
        assert math.isclose(loss.item(), expected, rel_tol=1e-6)
        loss.backward()
        assert torch.isfinite(features.grad).all() and features.grad[[5, 7, 10]].abs().sum() == 0
        assert features.grad[[0, 1, 9]].abs().sum() == 0  # class 0 has no negative: log(1) per anchor
        assert features.grad[[3, 6, 2, 8, 11, 4]].abs().sum(1).min() > 0  # anchors and negatives
    assert hqcl.bank.count.tolist() == [len(s) for s in stored] and hqcl.bank.count[4] == 0
    assert not hqcl.bank.features.requires_grad


def test_high_quality_contrast_draws_anchors_and_negatives_from_their_sets(monkeypatch):
    import nnunet_uda.losses.hqcl as module
    captured = {}

    def capture(*args, **kwargs):
        captured["args"] = args
        return hqcl_loss(*args, **kwargs)

    monkeypatch.setattr(module, "hqcl_loss", capture)
    g = torch.Generator().manual_seed(7)
    n, c = 400, 3
    features = torch.randn(n, 4, generator=g).requires_grad_()
    labels, predicted = torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (n,), generator=g)
    labeled, reliable = torch.rand(n, generator=g) > 0.5, torch.rand(n, generator=g) > 0.5
    hqcl = HighQualityContrast(c, 4, bank_size=16, anchors=8, negatives=6)
    hqcl(features, labels, predicted, labeled, reliable, generator=g)
    anchors, anchor_valid, _, centre_valid, negatives, negative_valid = captured["args"][:6]
    row = {tuple(v): i for i, v in enumerate(features.tolist())}
    for k in range(c):
        anchor_rows = {row[tuple(v)] for v in anchors[k][anchor_valid[k]].tolist()}
        assert len(anchor_rows) == 8 and all(labels[i] == k and (predicted[i] == k if labeled[i] else reliable[i])
                                             for i in anchor_rows)
        negative_rows = [row[tuple(v)] for v in negatives[k][negative_valid[k]].tolist()]
        assert len(negative_rows) == 8 * 6 and all(labeled[i] and predicted[i] == k != labels[i] for i in negative_rows)
    assert hqcl.bank.count.tolist() == [16] * c and centre_valid.all()


def test_high_quality_contrast_edge_cases():
    """Empty input, a bank that stays empty, nothing labeled and nothing reliable ("everything
    unreliable"), and a batch whose labeled voxels are all mispredicted: zeros connected to the
    features, finite gradients."""
    hqcl = HighQualityContrast(3, 4, bank_size=8)
    empty = torch.zeros(0, 4, requires_grad=True)
    none = torch.zeros(0, dtype=torch.long)
    loss = hqcl(empty, none, none, none.bool(), none.bool())
    loss.backward()
    assert loss.item() == 0.0 and hqcl.bank.count.sum() == 0
    features = torch.randn(6, 4, requires_grad=True)
    labels, predicted = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([1, 2, 0, 1, 2, 0])
    for labeled in (torch.zeros(6, dtype=torch.bool), torch.ones(6, dtype=torch.bool)):
        loss = hqcl(features, labels, predicted, labeled, torch.zeros(6, dtype=torch.bool))
        assert loss.item() == 0.0 and loss.grad_fn is not None
        loss.backward()
        assert torch.isfinite(features.grad).all()
    assert hqcl.bank.count.sum() == 0
    state = hqcl.state_dict()
    other = HighQualityContrast(3, 4, bank_size=8)
    other.load_state_dict(state)
    assert torch.equal(other.bank.features, hqcl.bank.features)


# ---------------------------------------------------------------- DVCL (eqs. 11-19)

def loop_dvcl(qf, qp, cf, cp, k, k_far, u, r, nps, qds, n_unreliable):
    """Eqs. 12-19 per query, with "m among n's J nearest" judged in {candidates except n} u {m}."""
    qf, qp, cf, cp = qf.tolist(), qp.tolist(), cf.tolist(), cp.tolist()
    big_l = len(cf)

    def among_nearest(n, similarity_to_m, j):
        others = sorted((cosine(cf[n], cf[o]) for o in range(big_l) if o != n), reverse=True)
        return len(others) < j or similarity_to_m >= others[j - 1]

    psis = []
    for m in range(len(qf)):
        ranked = sorted(range(big_l), key=lambda n: cosine(qf[m], cf[n]), reverse=True)
        near, far = ranked[:min(k, big_l)], ranked[::-1][:min(k_far, big_l)]
        if qds and not any(among_nearest(n, cosine(qf[m], cf[n]), u) for n in near):
            continue
        psi = 0.0
        for n in near:
            affinity = 1.0 if not nps or among_nearest(n, cosine(qf[m], cf[n]), k) else r
            psi -= affinity * dot(qp[m], cp[n])
        psi += sum(dot(qp[m], cp[j]) for j in far)
        psi += (len(near) - len(far)) * (math.log(n_unreliable) + 1)
        psis.append(psi)
    return (sum(psis) / len(psis), len(psis)) if psis else (0.0, 0)


def dvcl_inputs(seed, q=12, big_l=30, d=6, c=4):
    g = torch.Generator().manual_seed(seed)
    query_features = torch.randn(q, d, generator=g, dtype=torch.float64)
    query_probs = torch.softmax(2 * torch.randn(q, c, generator=g, dtype=torch.float64), 1).requires_grad_()
    candidate_features = torch.randn(big_l, d, generator=g, dtype=torch.float64)
    candidate_probs = torch.softmax(2 * torch.randn(big_l, c, generator=g, dtype=torch.float64), 1)
    return query_features, query_probs, candidate_features, candidate_probs


@pytest.mark.parametrize("nps", [True, False])
@pytest.mark.parametrize("qds", [True, False])
@pytest.mark.parametrize("k, k_far, u", [(4, 4, 6), (5, 3, 8), (3, 6, 2)])
def test_dvcl_loss_matches_the_loop_transcription(nps, qds, k, k_far, u):
    inputs = dvcl_inputs(8)
    loss = dvcl_loss(*inputs, k, k_far, u, r=0.3, nps=nps, qds=qds, n_unreliable=50)
    expected, kept = loop_dvcl(*inputs, k, k_far, u, 0.3, nps, qds, 50)
    assert math.isclose(loss.item(), expected, rel_tol=1e-9, abs_tol=1e-9)
    if qds and u == 2:
        assert 0 < kept < 12  # QDS leaves some queries out here
    loss.backward()
    assert torch.isfinite(inputs[1].grad).all() and inputs[1].grad.abs().sum() > 0


def test_dvcl_strategies_change_the_loss_and_qds_keeps_gradients_off_outliers():
    inputs = dvcl_inputs(9)
    values = {(nps, qds): dvcl_loss(*inputs, 4, 4, 2, nps=nps, qds=qds).item() for nps in (0, 1) for qds in (0, 1)}
    assert len({round(v, 9) for v in values.values()}) == 4
    loss = dvcl_loss(*inputs, 4, 4, 2, qds=True)
    loss.backward()
    kept = [m for m in range(12) if loop_dvcl(*(x[m:m + 1] if i < 2 else x for i, x in enumerate(inputs)),
                                              4, 4, 2, 0.5, True, True, 12)[1]]
    moved = inputs[1].grad.abs().sum(1) > 0
    assert 0 < len(kept) < 12 and moved.nonzero().flatten().tolist() == kept


def test_dvcl_loss_default_n_unreliable_and_few_candidates():
    """Fewer candidates than K or K': C and D hold all of them, the constant uses min(K, L) - min(K', L)."""
    inputs = dvcl_inputs(10, q=5, big_l=3)
    for k, k_far, u in ((8, 2, 16), (2, 8, 16), (8, 8, 8)):
        loss = dvcl_loss(*inputs, k, k_far, u)
        expected, kept = loop_dvcl(*inputs, k, k_far, u, 0.5, True, True, 5)
        assert kept == 5 and math.isclose(loss.item(), expected, rel_tol=1e-9, abs_tol=1e-9)
    one = dvcl_inputs(11, q=4, big_l=1)  # a single candidate: it is everyone's neighbour and outsider
    assert math.isclose(dvcl_loss(*one, 3, 3, 5).item(), loop_dvcl(*one, 3, 3, 5, 0.5, True, True, 4)[0], rel_tol=1e-9)


def test_dvcl_loss_edge_cases_are_connected_zeros():
    qf, qp, cf, cp = dvcl_inputs(12)
    for args in ((qf, qp, cf[:0], cp[:0]), (qf[:0], qp[:0], cf, cp)):
        loss = dvcl_loss(*args, 4, 4, 8)
        assert loss.item() == 0.0 and loss.grad_fn is not None
        loss.backward()
    # every neighbour of the query has nearer candidates than it: QDS keeps nothing
    tight = torch.tensor([[1.0, 0.0], [1.0, 0.01], [1.0, -0.01], [0.99, 0.02]], dtype=torch.float64)
    query = torch.tensor([[-1.0, 0.5]], dtype=torch.float64)
    probs = torch.full((1, 3), 1 / 3, dtype=torch.float64, requires_grad=True)
    loss = dvcl_loss(query, probs, tight, torch.full((4, 3), 1 / 3, dtype=torch.float64), 1, 1, 1)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(probs.grad, torch.zeros_like(probs))


def test_distance_aware_contrast_scores_against_the_queue_before_the_step():
    g = torch.Generator().manual_seed(13)
    dvcl = DistanceAwareContrast(4, 3, queue_size=40, queries=10, k=3, k_far=3, u=6)
    features = torch.randn(25, 3, generator=g, requires_grad=True)
    logits = torch.randn(25, 4, generator=g, requires_grad=True)
    loss = dvcl(features, torch.softmax(logits, 1), generator=torch.Generator().manual_seed(0))
    assert loss.item() == 0.0 and loss.grad_fn is not None  # first step: empty queue
    loss.backward()
    assert torch.isfinite(logits.grad).all() and len(dvcl.queue) == 25
    stored = dvcl.queue.contents()
    assert {tuple(x) for x in stored[0].tolist()} == {tuple(x) for x in features.tolist()}
    assert not stored[0].requires_grad and not stored[1].requires_grad

    features2 = torch.randn(30, 3, generator=g, requires_grad=True)
    probs2 = torch.softmax(torch.randn(30, 4, generator=g), 1).requires_grad_()
    query = torch.randperm(30, generator=torch.Generator().manual_seed(1))[:10]
    expected = dvcl_loss(features2[query], probs2[query], *stored, 3, 3, 6, n_unreliable=30)
    loss = dvcl(features2, probs2, generator=torch.Generator().manual_seed(1))
    assert loss.item() == expected.item() != 0.0
    loss.backward()
    assert probs2.grad.abs().sum(1).gt(0).sum() <= 10 and probs2.grad.abs().sum() > 0
    assert features2.grad is None  # the features only choose neighbours
    assert len(dvcl.queue) == 40  # 25 + 30 pushed, the newest 40 kept

    state = dvcl.state_dict()
    other = DistanceAwareContrast(4, 3, queue_size=40)
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(other.queue.contents(), dvcl.queue.contents()))


def test_distance_aware_contrast_without_unreliable_voxels_and_with_a_subset_pushed():
    dvcl = DistanceAwareContrast(3, 2, queue_size=8, queries=4, k=2, k_far=2, u=4)
    empty = torch.zeros(0, 2, requires_grad=True), torch.zeros(0, 3, requires_grad=True)
    loss = dvcl(*empty)
    loss.backward()
    assert loss.item() == 0.0 and len(dvcl.queue) == 0
    features, probs = torch.randn(20, 2), torch.softmax(torch.randn(20, 3), 1).requires_grad_()
    dvcl(features, probs)
    assert len(dvcl.queue) == 8  # a random subset of at most queue_size
    stored = {tuple(x) for x in dvcl.queue.contents()[0].tolist()}
    assert stored <= {tuple(x) for x in features.tolist()}
    loss = dvcl(*empty)  # all reliable in this step: nothing to score, the queue unchanged
    loss.backward()
    assert loss.item() == 0.0 and len(dvcl.queue) == 8
    loss = dvcl(features, probs)  # everything unreliable
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(probs.grad).all()
