"""DACL's density (eqs. 3-5), anchor and key selection (eqs. 6-8), positiveness (eq. 9) and L_CL^soft (eq. 10)
against direct loop transcriptions; what eq. 10's printed form implies; edge cases; the bank across two gloo
processes."""
import math

import pytest
import torch

from conftest import on_gloo_ranks
import nnunet_uda.losses.dacl as dacl
from nnunet_uda.losses.dacl import (DensityAwareContrast, draw_negatives, extreme, knn_density, positive_centres,
                                    positiveness, soft_contrast)
from nnunet_uda.training.dacl import masked_average_pool


def cosine(a, b):
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b)) / (max(na, 1e-12) * max(nb, 1e-12))


def normalised(v):
    n = max(math.sqrt(sum(x * x for x in v)), 1e-12)
    return [x / n for x in v]


def loop_density(query, others, scales):
    """Eqs. 3-5 for one feature: the mean cosine to its k nearest ``others``, averaged over ``scales``."""
    similarities = sorted((cosine(query, r) for r in others), reverse=True)
    total = 0.0
    for k in scales:
        nearest = similarities[:k]
        total += sum(nearest) / len(nearest) if nearest else 0.0
    return total / len(scales)


def loop_soft_contrast(anchors, centre, negatives, tau, weights, form):
    """Eq. 10 for one class (module docstring of nnunet_uda.losses.dacl for the two forms)."""
    terms = []
    for m, w in zip(anchors, weights):
        positive = math.exp(cosine(m, centre) / tau)
        negative = sum(math.exp(cosine(m, n) / tau) for n in negatives)
        if form == "supcon":
            terms.append(-math.log(positive / (positive + negative)))
        else:
            terms.append(-math.log(w * positive / negative))
    if form == "supcon":
        return sum(w * t for w, t in zip(weights, terms)) / sum(weights)
    return sum(terms) / len(terms)


def loop_positiveness(anchors, centre):
    """Eq. 9 with gamma_i = 1 / |M^n|."""
    scores = [math.exp(cosine(m, centre)) for m in anchors]
    return [len(anchors) * s / sum(scores) for s in scores]


# ---------------------------------------------------------------- density (eqs. 3-5)

@pytest.mark.parametrize("scales", [(2,), (1, 3, 5), (4, 50)])
def test_density_matches_the_loop_transcription(scales):
    g = torch.Generator().manual_seed(0)
    features, bank = torch.randn(3, 6, 4, generator=g, dtype=torch.float64), torch.randn(3, 5, 4, generator=g)
    valid = torch.rand(3, 6, generator=g) > 0.3
    bank_valid = torch.rand(3, 5, generator=g) > 0.4
    valid[2] = False
    valid[2, 0] = True  # a class with a single feature: only bank neighbours
    bank_valid[1] = False  # an empty bank
    density = knn_density(features, valid, bank, bank_valid, scales)
    for c in range(3):
        for i in range(6):
            if valid[c, i]:
                others = [bank[c, j].tolist() for j in range(5) if bank_valid[c, j]]
                others += [features[c, j].tolist() for j in range(6) if valid[c, j] and j != i]
                assert density[c, i].item() == pytest.approx(loop_density(features[c, i].tolist(), others, scales),
                                                             abs=1e-5), (c, i)
    assert not density.requires_grad


def test_a_feature_without_neighbours_has_density_zero():
    features = torch.randn(2, 3, 4)
    valid = torch.tensor([[True, False, False], [False, False, False]])
    density = knn_density(features, valid, torch.randn(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool))
    assert density[0, 0] == 0 and torch.isfinite(density).all()


# ---------------------------------------------------------------- selection (eqs. 6-9)

def test_extreme_picks_the_lowest_and_highest_valid_scores():
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.3], [0.2, 0.8, 0.4, 0.6]])
    valid = torch.tensor([[True, True, False, True], [False, True, False, False]])
    index, chosen = extreme(scores, valid, 2, largest=False)  # eq. 6: the lowest densities
    assert index[0].tolist() == [1, 3] and chosen[0].tolist() == [True, True]
    assert index[1, 0].item() == 1 and chosen[1].tolist() == [True, False]  # fewer valid than asked
    index, chosen = extreme(scores, valid, 2, largest=True)  # eq. 7: the highest
    assert index[0].tolist() == [0, 3] and chosen[0].tolist() == [True, True]
    index, chosen = extreme(scores, valid, 10, largest=True)  # more than there are: all columns
    assert index.shape == (2, 4) and chosen.sum().item() == 4


def test_centre_is_the_normalised_mean_of_the_chosen_batch_and_bank_keys():
    g = torch.Generator().manual_seed(1)
    batch, bank = torch.randn(2, 5, 3, generator=g, requires_grad=True), torch.randn(2, 4, 3, generator=g)
    batch_index, bank_index = torch.tensor([[4, 0], [1, 2]]), torch.tensor([[3, 1], [0, 0]])
    batch_valid, bank_valid = torch.tensor([[True, True], [True, False]]), torch.tensor([[True, False], [False, False]])
    centres, exists = positive_centres(batch, batch_index, batch_valid, bank, bank_index, bank_valid)
    keys = [[normalised(batch[0, 4].tolist()), normalised(batch[0, 0].tolist()), normalised(bank[0, 3].tolist())],
            [normalised(batch[1, 1].tolist())]]
    for c in range(2):
        mean = normalised([sum(k[j] for k in keys[c]) / len(keys[c]) for j in range(3)])
        assert centres[c].tolist() == pytest.approx(mean, abs=1e-6)
    assert exists.tolist() == [True, True] and not centres.requires_grad
    _, exists = positive_centres(batch, batch_index, torch.zeros(2, 2, dtype=torch.bool))
    assert exists.tolist() == [False, False]


def test_positiveness_matches_eq9_and_averages_one():
    g = torch.Generator().manual_seed(2)
    anchors, centres = torch.randn(2, 4, 5, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g)
    centres = torch.nn.functional.normalize(centres, dim=-1)
    valid = torch.tensor([[True, True, False, True], [True, False, False, False]])
    w = positiveness(anchors, valid, centres)
    for c in range(2):
        kept = [anchors[c, i].tolist() for i in range(4) if valid[c, i]]
        assert [w[c, i].item() for i in range(4) if valid[c, i]] == pytest.approx(
            loop_positiveness(kept, centres[c].tolist()))
    assert w[~valid].eq(0).all() and w[0][valid[0]].mean().item() == pytest.approx(1.0)


def test_negatives_come_from_the_other_classes_valid_anchors():
    g = torch.Generator().manual_seed(3)
    valid = torch.tensor([[True, False, True], [False, False, False], [True, True, False]])
    index, exists = draw_negatives(valid, 200, g)
    owner, flat = index // 3, valid.flatten()
    assert exists.tolist() == [True, True, True]
    for c in range(3):
        assert (owner[c] != c).all() and flat[index[c]].all()
    assert set(index[1].tolist()) == {0, 2, 6, 7}  # every allowed anchor drawn (200 draws of 4)
    only = torch.tensor([[True, True], [False, False]])
    assert draw_negatives(only, 5)[1].tolist() == [False, True]  # one class alone has no negatives


# ---------------------------------------------------------------- eq. 10

def contrast_inputs(seed, c=3, q=5, p=6, d=4):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(c, q, d, generator=g, dtype=torch.float64, requires_grad=True)
    centres = torch.nn.functional.normalize(torch.randn(c, d, generator=g, dtype=torch.float64), dim=-1)
    negatives = torch.randn(c, p, d, generator=g, dtype=torch.float64, requires_grad=True)
    valid = torch.rand(c, q, generator=g) > 0.3
    valid[:, 0] = True
    return anchors, valid, centres, negatives


@pytest.mark.parametrize("form", ["supcon", "printed"])
@pytest.mark.parametrize("weighted", [False, True])
def test_soft_contrast_matches_the_loop_transcription(form, weighted):
    anchors, valid, centres, negatives = contrast_inputs(4)
    centre_valid, negative_valid = torch.tensor([True, True, False]), torch.tensor([True, True, True])
    weights = positiveness(anchors, valid, centres) if weighted else None
    loss = soft_contrast(anchors, valid, centres, centre_valid, negatives, negative_valid, 0.4, weights, form)
    expected = []
    for c in range(2):  # class 2 has no centre
        kept = [i for i in range(5) if valid[c, i]]
        w = [weights[c, i].item() for i in kept] if weighted else [1.0] * len(kept)
        expected.append(loop_soft_contrast([anchors[c, i].tolist() for i in kept], centres[c].tolist(),
                                           negatives[c].tolist(), 0.4, w, form))
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-9)


def test_the_printed_form_is_not_bounded_by_zero_and_never_stops_pulling():
    """Eq. 10 as printed has no positive in its denominator: an anchor on its centre scores below zero, and the
    loss keeps falling at 1 / tau per unit of cosine however close the anchor is; the SupCon form stays positive
    and its pull vanishes there. (Negatives orthogonal to the anchor's path, so only the positive moves.)"""
    centre = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    negatives = torch.tensor([[[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]], dtype=torch.float64)
    valid, yes = torch.ones(1, 1, dtype=torch.bool), torch.ones(1, dtype=torch.bool)

    def loss(theta, form):
        anchor = torch.tensor([[[math.cos(theta), 0.0, math.sin(theta)]]], dtype=torch.float64)
        return soft_contrast(anchor, valid, centre, yes, negatives, yes, 0.1, None, form).item()

    def slope(form):  # d loss / d cosine near the centre
        return (loss(0.01, form) - loss(0.02, form)) / (math.cos(0.01) - math.cos(0.02))

    assert loss(0.0, "printed") < -9 and loss(0.0, "supcon") > 0
    assert slope("printed") == pytest.approx(-1 / 0.1) and abs(slope("supcon")) < 1e-3


def test_in_the_printed_form_a_detached_weight_is_a_constant():
    """w_i inside the log only shifts the loss by -mean(log w_i) once detached: eq. 10 as printed moves the
    anchors through w_i only by w_i's own gradient (which the printed form keeps), not as a weight."""
    anchors, valid, centres, negatives = contrast_inputs(5)
    yes = torch.ones(3, dtype=torch.bool)
    w = positiveness(anchors, valid, centres)
    plain = soft_contrast(anchors, valid, centres, yes, negatives, yes, 0.4, None, "printed")
    detached = soft_contrast(anchors, valid, centres, yes, negatives, yes, 0.4, w.detach(), "printed")
    kept = soft_contrast(anchors, valid, centres, yes, negatives, yes, 0.4, w, "printed")
    (g_plain,), (g_detached,), (g_kept,) = (torch.autograd.grad(x, anchors, retain_graph=True)
                                            for x in (plain, detached, kept))
    assert torch.allclose(g_plain, g_detached) and not torch.allclose(g_plain, g_kept)
    shift = (torch.where(valid, -torch.log(w.detach().clamp_min(1e-300)), 0).sum(1) / valid.sum(1)).mean()
    assert (detached - plain).item() == pytest.approx(shift.item())


def test_supcon_weights_favour_anchors_near_the_centre():
    """In the default form w_i is a detached per-anchor weight: the gradient on an anchor scales with w_i."""
    anchors, valid, centres, negatives = contrast_inputs(6, c=2, q=2)
    valid[:] = True
    yes = torch.ones(2, dtype=torch.bool)
    weights = torch.tensor([[1.5, 0.5], [1.0, 1.0]], dtype=torch.float64)
    (g_plain,) = torch.autograd.grad(soft_contrast(anchors, valid, centres, yes, negatives, yes), anchors)
    (g_weighted,) = torch.autograd.grad(soft_contrast(anchors, valid, centres, yes, negatives, yes, 0.4, weights),
                                        anchors)
    assert torch.allclose(g_weighted[0, 0], 1.5 * g_plain[0, 0]) and torch.allclose(g_weighted[0, 1],
                                                                                     0.5 * g_plain[0, 1])
    assert torch.allclose(g_weighted[1], g_plain[1])


def test_soft_contrast_ignores_autocast_and_its_edge_cases_are_connected_zeros():
    anchors, valid, centres, negatives = contrast_inputs(7)
    args = (anchors.float(), valid, centres.float(), torch.ones(3, dtype=torch.bool), negatives.float(),
            torch.ones(3, dtype=torch.bool))
    plain = soft_contrast(*args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert soft_contrast(*args).item() == plain.item()
    none = torch.zeros(3, dtype=torch.bool)
    for empty in ((anchors, torch.zeros_like(valid), centres, ~none, negatives, ~none),  # no anchors
                  (anchors, valid, centres, none, negatives, ~none),  # no centre
                  (anchors, valid, centres, ~none, negatives, none)):  # a single class: no negatives
        loss = soft_contrast(*empty)
        assert loss.item() == 0 and loss.requires_grad
        loss.backward()
    with pytest.raises(ValueError, match="form"):
        soft_contrast(*args, form="infonce")


# ---------------------------------------------------------------- the module over steps

def first_negatives(valid, count, generator=None):
    """A deterministic stand-in for draw_negatives: the other classes' valid anchors in order, cycled."""
    c, q = valid.shape
    flat = valid.flatten()
    rows, exists = [], []
    for n in range(c):
        allowed = [j for j in range(c * q) if flat[j] and j // q != n]
        exists.append(bool(allowed))
        rows.append([allowed[i % len(allowed)] if allowed else 0 for i in range(count)])
    return torch.tensor(rows), torch.tensor(exists)


def loop_step(features, labels, bank, settings):
    """One step of L_CL^soft transcribed with lists; ``bank`` maps class -> [(feature, density)] (updated)."""
    c, q, keys, neg, tau, scales = (settings[k] for k in ("c", "q", "keys", "neg", "tau", "scales"))
    members = {n: [f for f, y in zip(features, labels) if y == n] for n in range(c)}
    density = {}
    for n, feats in members.items():
        stored = [f for f, _ in bank[n]]
        density[n] = [loop_density(f, stored + feats[:i] + feats[i + 1:], scales) for i, f in enumerate(feats)]
    anchors, centres = {}, {}
    for n, feats in members.items():
        order = sorted(range(len(feats)), key=lambda i: density[n][i])
        anchors[n] = [feats[i] for i in order[:q]]  # eq. 6
        chosen = [normalised(feats[i]) for i in order[::-1][:keys // 2]]  # eq. 7, batch
        chosen += [normalised(f) for f, _ in sorted(bank[n], key=lambda e: -e[1])[:keys - keys // 2]]  # bank
        if chosen:
            centres[n] = normalised([sum(k[j] for k in chosen) / len(chosen) for j in range(len(chosen[0]))])
    flat = [(n, a) for n in range(c) for a in anchors[n] + [None] * (q - len(anchors[n]))]
    losses = []
    for n in range(c):
        allowed = [a for m, a in flat if a is not None and m != n]
        if not anchors[n] or n not in centres or not allowed:
            continue
        negatives = [allowed[i % len(allowed)] for i in range(neg)]
        w = loop_positiveness(anchors[n], centres[n])
        losses.append(loop_soft_contrast(anchors[n], centres[n], negatives, tau, w, "supcon"))
    for n in range(c):
        bank[n] += list(zip(members[n], density[n]))
    return sum(losses) / len(losses)


def test_density_aware_contrast_matches_the_loop_transcription_over_two_steps(monkeypatch):
    """Candidates, bank pushes and bank size large enough that nothing random is left but the negatives
    (replaced by a deterministic rule in both)."""
    monkeypatch.setattr(dacl, "draw_negatives", first_negatives)
    settings = dict(c=3, q=3, keys=4, neg=5, tau=0.4, scales=(1, 3))
    module = DensityAwareContrast(3, 4, bank_size=100, candidates=50, anchors=3, positive_keys=4, negative_keys=5,
                                  tau=0.4, scales=(1, 3), bank_push=50)
    bank = {n: [] for n in range(3)}
    g = torch.Generator().manual_seed(8)
    for step in range(2):
        features = torch.randn(14, 4, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 4, (14,), generator=g)  # 3: no class
        loss = module(features, labels)
        expected = loop_step(features.tolist(), labels.tolist(), bank, settings)
        assert loss.item() == pytest.approx(expected, rel=1e-6), step
    assert module.bank.count.tolist() == [len(bank[n]) for n in range(3)]


def test_the_table2_switches_change_what_is_selected():
    g = torch.Generator().manual_seed(9)
    features, labels = torch.randn(300, 8, generator=g), torch.randint(0, 3, (300,), generator=g)
    common = dict(bank_size=40, candidates=64, anchors=8, positive_keys=8, negative_keys=16)
    values = {}
    for name, switches in {"PCL": dict(sampling="random", use_bank=False, use_positiveness=False),
                           "DA": dict(scales=(8,), use_bank=False, use_positiveness=False),
                           "MS": dict(use_bank=False, use_positiveness=False),
                           "Bank": dict(use_positiveness=False), "full": {}}.items():
        torch.manual_seed(0)
        module = DensityAwareContrast(3, 8, **common, **switches)
        for _ in range(2):
            values[name] = module(features, labels).item()
        assert (module.bank.count > 0).all() == module.use_bank
    assert len(set(values.values())) == 5, values


def test_density_aware_contrast_edge_cases():
    module = DensityAwareContrast(3, 4, bank_size=10, candidates=8, anchors=4, positive_keys=4, negative_keys=4)
    empty = torch.zeros(0, 4, requires_grad=True)
    assert module(empty, torch.zeros(0, dtype=torch.long)).item() == 0
    one_class = torch.randn(5, 4, requires_grad=True)
    loss = module(one_class, torch.zeros(5, dtype=torch.long))  # a single class: no negatives
    assert loss.item() == 0 and loss.requires_grad
    few = torch.randn(3, 4, requires_grad=True)  # classes with fewer features than N_q and k, one absent
    loss = module(few, torch.tensor([0, 1, 1]))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(few.grad).all() and few.grad.abs().sum() > 0
    assert module.bank.count.tolist() == [6, 2, 0]
    bank_density = module.bank.features[0, :6, -1]
    assert torch.isfinite(bank_density).all()


def test_gradients_reach_anchors_and_negatives_not_the_centre():
    torch.manual_seed(0)
    features = torch.randn(40, 4, requires_grad=True)
    labels = torch.arange(40) % 2
    module = DensityAwareContrast(2, 4, candidates=20, anchors=5, positive_keys=4, negative_keys=8)
    module(features, labels).backward()
    touched = features.grad.abs().sum(1) > 0
    assert 10 <= int(touched.sum()) < 40  # anchors (5 per class) and their negatives, not the other voxels


def test_state_dict_round_trips_and_refuses_another_size():
    module = DensityAwareContrast(2, 4, bank_size=6)
    module(torch.randn(20, 4), torch.arange(20) % 2)
    copy = DensityAwareContrast(2, 4, bank_size=6)
    copy.load_state_dict(module.state_dict())
    assert all(torch.equal(v, copy.state_dict()[k]) for k, v in module.state_dict().items())
    with pytest.raises(ValueError, match="shape"):
        DensityAwareContrast(2, 4, bank_size=7).load_state_dict(module.state_dict())


def test_masked_average_pool_is_eq2_per_image_and_class():
    g = torch.Generator().manual_seed(10)
    projected = torch.randn(2, 3, 4, 5, generator=g)
    classes = torch.randint(0, 3, (2, 4, 5), generator=g)  # 2: no class (num_classes 2)
    classes[1] = torch.where(classes[1] == 1, 0, classes[1])  # image 1 has no class 1
    vectors, owners = masked_average_pool(projected, classes, 2)
    expected = []
    for b in range(2):
        for n in range(2):
            mask = classes[b] == n
            if mask.any():
                expected.append((n, projected[b][:, mask].mean(1)))
    assert owners.tolist() == [n for n, _ in expected]
    assert torch.allclose(vectors, torch.stack([v for _, v in expected]), atol=1e-6)


# ---------------------------------------------------------------- DDP

def _bank_worker(rank):
    torch.manual_seed(rank)
    module = DensityAwareContrast(3, 4, bank_size=20, candidates=16, anchors=4, positive_keys=4, negative_keys=4,
                                  bank_push=3)
    for step in range(3):
        n = (5, 9)[rank] if step != 1 else (0, 7)[rank]  # ranks with different counts, one empty
        loss = module(torch.randn(n, 4), torch.randint(0, 3, (n,)))
    return {"bank": module.state_dict(), "loss": loss}


def test_the_bank_is_gathered_across_two_gloo_ranks(tmp_path):
    states = on_gloo_ranks(_bank_worker, tmp_path)
    for key in ("features", "count", "head"):
        assert torch.equal(states[0]["bank"][key], states[1]["bank"][key]), key
    assert int(states[0]["bank"]["count"].sum()) > 9  # more than one rank's pushes (3 per class and step)
