"""l_fpc (AICL eq. 4) and l_csc (eq. 5) against direct loop transcriptions, edge cases, gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_uda.losses.patch_contrast import patch_contrastive_loss
from nnunet_uda.losses.structural_consistency import (contrast_classes, fixed_maps, predicted_classes,
                                                       structural_consistency_loss, twin_pairs)


def cosine(a, b):
    return float((a.flatten() @ b.flatten()) / (a.norm() * b.norm()))


def soft_dice(a, b):
    return float(2 * (a.flatten() @ b.flatten()) / (a.norm() ** 2 + b.norm() ** 2))


def loop_fpc(embeddings, present, tau):
    """-E_m sum_k mean over positives of log[e^{s+/tau} / (e^{s+/tau} + sum_{j != k} e^{s_j/tau})]."""
    b, k = present.shape
    per_sample = []
    for m in range(b):
        total, any_anchor = 0.0, False
        for c in range(k):
            if not present[m, c]:
                continue
            positives = [cosine(embeddings[m, c], embeddings[n, c]) for n in range(b) if n != m and present[n, c]]
            negatives = [cosine(embeddings[m, c], embeddings[n, j]) for n in range(b) for j in range(k)
                         if j != c and present[n, j]]
            if not positives:
                continue
            any_anchor = True
            denominator_rest = sum(math.exp(s / tau) for s in negatives)
            total += sum(-math.log(math.exp(p / tau) / (math.exp(p / tau) + denominator_rest))
                         for p in positives) / len(positives)
        if any_anchor:
            per_sample.append(total)
    return sum(per_sample) / len(per_sample)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fpc_matches_the_loop_transcription(seed):
    g = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(4, 3, 24, generator=g)
    present = torch.rand(4, 3, generator=g) > 0.25
    present[0] = True
    loss = patch_contrastive_loss(embeddings, present, temperature=0.5)
    assert math.isclose(float(loss), loop_fpc(embeddings, present, 0.5), rel_tol=1e-4)


def test_fpc_rewards_same_organ_alignment_across_modalities():
    organ_directions = torch.eye(3, 16)
    aligned = organ_directions.expand(2, 3, 16) + 0.01 * torch.randn(2, 3, 16)
    shuffled = aligned.clone()
    shuffled[1] = shuffled[1, [1, 2, 0]]
    present = torch.ones(2, 3, dtype=torch.bool)
    assert patch_contrastive_loss(aligned, present) < 0.01 < patch_contrastive_loss(shuffled, present)


def test_fpc_edge_cases_are_finite():
    embeddings = torch.randn(2, 3, 8, requires_grad=True)
    one_organ = torch.tensor([[True, False, False], [True, False, False]])  # positives, no negatives
    loss = patch_contrastive_loss(embeddings, one_organ)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(embeddings.grad).all()
    alone = torch.tensor([[True, True, False], [False, False, True]])  # no organ shared: no positive
    assert patch_contrastive_loss(embeddings, alone).item() == 0.0
    assert patch_contrastive_loss(embeddings, torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_fpc_gradient_reaches_present_patches_only():
    embeddings = torch.randn(3, 3, 8, requires_grad=True)
    present = torch.tensor([[True, True, False], [True, True, False], [True, False, False]])
    patch_contrastive_loss(embeddings, present).backward()
    assert embeddings.grad[:, 2].abs().sum() == 0 and embeddings.grad[1, 2].abs().sum() == 0
    assert embeddings.grad[present].abs().sum(1).min() > 0


def loop_csc(probs, domains, present, temperature=None, eps=1e-6, pairs=None, phi=cosine):
    """-E over ordered cross-domain pairs of sum_k log[phi(Y^k_a, Y^k_b) / sum_j phi(Y^k_a, Y^j_b)];
    with a temperature, every phi becomes exp(phi / temperature); ``pairs``: only those (a, b)."""
    def score(x, y):
        return phi(x, y) if temperature is None else math.exp(phi(x, y) / temperature)

    b, k = present.shape
    pair_losses = []
    for a in range(b):
        for c in range(b):
            if domains[a] == domains[c] or (pairs is not None and (a, c) not in pairs):
                continue
            organs = [o for o in range(k) if present[a, o] and present[c, o]]
            if not organs:
                continue
            total = 0.0
            for o in organs:
                positive = score(probs[a, o + 1], probs[c, o + 1])
                denominator = sum(score(probs[a, o + 1], probs[c, j + 1]) for j in range(k) if present[c, j])
                total += -math.log((positive + eps) / (denominator + eps)) if temperature is None else \
                    -math.log(positive / denominator)
            pair_losses.append(total)
    return sum(pair_losses) / len(pair_losses)


@pytest.mark.parametrize("temperature", [None, 0.1, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_csc_matches_the_loop_transcription(seed, temperature):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(2 * torch.randn(4, 4, 5, 6, 7, generator=g), 1)
    domains = torch.tensor([1, 2, 0, 0])
    present = torch.rand(4, 3, generator=g) > 0.2
    loss = structural_consistency_loss(probs, domains, present, temperature)
    assert math.isclose(float(loss), loop_csc(probs, domains, present, temperature), rel_tol=1e-4)


@pytest.mark.parametrize("temperature", [None, 0.1])
def test_csc_with_soft_dice_matches_the_loop_transcription(temperature):
    g = torch.Generator().manual_seed(4)
    sharpness = torch.tensor([0.5, 1.0, 3.0, 6.0]).view(4, 1, 1, 1, 1)  # maps of different amplitudes
    probs = torch.softmax(sharpness * torch.randn(4, 4, 5, 6, 7, generator=g) + torch.tensor([0, 1, 0, -1.0]).view(
        1, 4, 1, 1, 1), 1)
    domains = torch.tensor([1, 2, 0, 0])
    present = torch.rand(4, 3, generator=g) > 0.2
    loss = structural_consistency_loss(probs, domains, present, temperature, similarity="dice")
    expected = loop_csc(probs, domains, present, temperature, phi=soft_dice)
    assert math.isclose(float(loss), expected, rel_tol=1e-4)
    assert not math.isclose(expected, loop_csc(probs, domains, present, temperature), rel_tol=1e-3)


def test_only_soft_dice_in_the_infonce_form_scores_a_faint_copy_worse():
    """A target map that copies its twin's organs at a fifth of their amplitude (background wins
    every voxel). In eq. 5 as printed the positive's scale cancels in the ratio wherever the
    negatives vanish, so it scores the faint copy 0 with either phi; in the InfoNCE form the
    cosine still does (it ignores amplitude) and the soft Dice does not."""
    labels = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    labels[:, :4] = 1
    labels[:, 4:6, 1:3, 1:3] = 2
    onehot = F.one_hot(labels, 3).movedim(-1, 1).float()
    faint = onehot.clone()
    faint[:, 1:] *= 0.2
    faint[:, 0] = 1 - faint[:, 1:].sum(1)
    domains, present, pairs = torch.tensor([1, 0]), torch.ones(2, 2, dtype=torch.bool), twin_pairs(2, 1)

    def csc(target, temperature, similarity):
        return structural_consistency_loss(torch.cat((target, onehot)), domains, present, temperature, pairs,
                                           similarity).item()
    for similarity in ("cosine", "dice"):
        assert csc(onehot, None, similarity) < 1e-4 and csc(faint, None, similarity) < 1e-4
    assert math.isclose(csc(faint, 0.1, "cosine"), csc(onehot, 0.1, "cosine"), rel_tol=1e-4)
    assert csc(faint, 0.1, "dice") > 100 * csc(onehot, 0.1, "dice")
    with pytest.raises(ValueError, match="unknown l_csc similarity 'dot'.*cosine, dice"):
        csc(onehot, None, "dot")


@pytest.mark.parametrize("temperature", [None, 0.1])
def test_csc_over_twin_pairs_matches_the_loop_transcription(temperature):
    """A twin batch of 5: samples 0 and 1 are paired with 3 and 4, sample 2 (unpaired) is left out."""
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(2 * torch.randn(5, 4, 5, 6, 7, generator=g), 1)
    domains = torch.tensor([1, 2, 0, 0, 0])
    present = torch.rand(5, 3, generator=g) > 0.2
    pairs = twin_pairs(5, 2)
    assert {tuple(x) for x in pairs.nonzero().tolist()} == {(0, 3), (3, 0), (1, 4), (4, 1)}
    loss = structural_consistency_loss(probs, domains, present, temperature, pairs)
    expected = loop_csc(probs, domains, present, temperature, pairs={(0, 3), (3, 0), (1, 4), (4, 1)})
    assert math.isclose(float(loss), expected, rel_tol=1e-4)
    assert not math.isclose(expected, loop_csc(probs, domains, present, temperature), rel_tol=1e-3)


def test_paired_anatomy_scores_below_uniform_maps_in_the_printed_form():
    """One subject in two modalities (the same organ layout): eq. 5 as printed ranks its true maps
    far below uniform maps, the premise of AICL's registered pairs; two subjects, unpaired, do not
    (the test below)."""
    labels = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    labels[:, :4] = 1
    labels[:, 4:6, 1:3, 1:3] = 2
    onehot = F.one_hot(labels, 3).movedim(-1, 1).float()
    uniform = torch.full_like(onehot, 1 / 3)
    domains, present, pairs = torch.tensor([1, 0]), torch.ones(2, 2, dtype=torch.bool), twin_pairs(2, 1)
    paired, flat = (structural_consistency_loss(p, domains, present, pairs=pairs).item() for p in (onehot, uniform))
    assert paired < 1e-4 and math.isclose(flat, 2 * math.log(2), rel_tol=1e-4)


def test_unpaired_anatomy_scores_below_uniform_maps_only_in_the_infonce_form():
    """Two subjects whose small organ lies elsewhere in each, partly where the other's large organ
    is: eq. 5 as printed scores their true one-hot maps far above uniform maps (K ln K), so
    minimising it moves predictions away from the anatomy; exp(phi / tau) scores them below
    (``nnUNetTrainerAICL.csc_temperature``)."""
    labels = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    labels[0, :4] = 1  # a large organ, a little larger in the second subject
    labels[1, :5] = 1
    labels[0, 4:6, 1:3, 1:3] = 2  # the small organ
    labels[1, 6:8, 5:7, 5:7] = 2
    onehot = F.one_hot(labels, 3).movedim(-1, 1).float()
    uniform = torch.full_like(onehot, 1 / 3)
    domains, present = torch.tensor([0, 1]), torch.ones(2, 2, dtype=torch.bool)
    printed = [structural_consistency_loss(p, domains, present).item() for p in (onehot, uniform)]
    infonce = [structural_consistency_loss(p, domains, present, 0.1).item() for p in (onehot, uniform)]
    assert printed[0] > 3 * printed[1] and math.isclose(printed[1], 2 * math.log(2), rel_tol=1e-4)
    assert infonce[0] < infonce[1] and math.isclose(infonce[1], 2 * math.log(2), rel_tol=1e-4)


def test_csc_is_low_for_matching_organ_maps_and_zero_within_one_domain():
    labels = torch.randint(0, 4, (1, 6, 6, 6)).expand(2, -1, -1, -1)
    sharp = F.one_hot(labels, 4).movedim(-1, 1).float() * 0.96 + 0.01
    present = torch.ones(2, 3, dtype=torch.bool)
    matching = structural_consistency_loss(sharp, torch.tensor([0, 1]), present)
    swapped = sharp.clone()
    swapped[1, 1:] = swapped[1, [2, 3, 1]]
    assert matching < structural_consistency_loss(swapped, torch.tensor([0, 1]), present)
    assert float(structural_consistency_loss(sharp, torch.tensor([1, 1]), present)) == 0.0


@pytest.mark.parametrize("temperature", [None, 0.1])
def test_csc_gradient_and_absent_organs(temperature):
    logits = torch.randn(3, 4, 5, 5, 5, requires_grad=True)
    probs = torch.softmax(logits, 1)
    present = torch.tensor([[True, False, True], [True, True, False], [False, False, False]])
    loss = structural_consistency_loss(probs, torch.tensor([0, 1, 1]), present, temperature)
    loss.backward()
    assert math.isfinite(loss.item()) and logits.grad.abs().sum() > 0 and torch.isfinite(logits.grad).all()
    nothing_shared = torch.tensor([[False, False, True], [True, True, False], [False, False, False]])
    assert structural_consistency_loss(probs, torch.tensor([0, 1, 1]), nothing_shared, temperature).item() == 0.0


def test_predicted_classes():
    probs = torch.zeros(2, 4, 2, 2, 2)
    probs[:, 0] = 1
    probs[0, 2, 0, 0, 0] = 5
    probs[1, 3, 1, 1, 1] = 5
    assert predicted_classes(probs).tolist() == [[False, True, False], [False, False, True]]


def test_contrast_classes_come_from_labels_where_annotated():
    """Labeled classes count when the label map shows them, whatever the prediction; a class
    without a label counts when predicted; the ignore label (4 here) is no class."""
    probs = torch.zeros(2, 4, 2, 2, 2)
    probs[:, 0] = 1
    probs[:, 3, 0, 0, 0] = 5  # both samples predict class 3 somewhere
    labels = torch.zeros(2, 1, 2, 2, 2, dtype=torch.int16)
    labels[0, 0, 1, 1, 1] = 1
    labels[1] = 4  # sample 1 is entirely unlabeled
    labels[1, 0, 0, 0, 1] = 2
    annotated = torch.tensor([[True, True, True, True], [True, False, True, False]])
    assert contrast_classes(labels, annotated, probs).tolist() == [[True, False, False], [False, True, True]]


def test_collapsing_predictions_do_not_lower_csc_with_label_presence():
    """Predicting one organ only gives l_csc = 0 if the organ set came from the prediction; with the
    labels' organs the collapsed prediction costs more than a correct one."""
    labels = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    labels[:, 0, :2, :2, :2], labels[:, 0, 2:, 2:, 2:] = 1, 2
    truth = torch.softmax(8 * F.one_hot(labels[:, 0], 3).permute(0, 4, 1, 2, 3).float(), 1)
    collapsed_logits = torch.zeros_like(truth)
    collapsed_logits[:, 1], collapsed_logits[:, 2] = 8, -8  # organ 1 everywhere, organ 2 nowhere
    collapsed = torch.softmax(collapsed_logits, 1)
    domains, annotated = torch.tensor([0, 1]), torch.ones(2, 3, dtype=torch.bool)
    assert structural_consistency_loss(collapsed, domains, predicted_classes(collapsed)).item() == 0.0
    with_labels = [structural_consistency_loss(p, domains, contrast_classes(labels, annotated, p)).item()
                   for p in (truth, collapsed)]
    assert with_labels[0] < with_labels[1]


def test_fixed_maps_keep_csc_gradients_off_the_fixed_samples():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 4, 4, 4, requires_grad=True)
    probs = torch.softmax(logits, 1)
    maps = fixed_maps(probs, torch.tensor([True, False, False]))
    assert torch.equal(maps, probs)
    structural_consistency_loss(maps, torch.tensor([0, 1, 2]), torch.ones(3, 3, dtype=torch.bool)).backward()
    assert logits.grad[0].abs().sum() == 0 and logits.grad[1].abs().sum() > 0 and logits.grad[2].abs().sum() > 0


def test_fixed_maps_per_class_keep_csc_gradients_off_the_fixed_classes_only():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2, 4, 4, 4, 4), 1).requires_grad_()
    fixed = torch.tensor([[True, True, True, False], [True, False, False, True]])  # e.g. hand-labeled classes
    structural_consistency_loss(fixed_maps(probs, fixed), torch.tensor([0, 1]), torch.ones(2, 3, dtype=torch.bool)).backward()
    moved = probs.grad.flatten(2).abs().sum(2) > 0
    assert torch.equal(moved[:, 1:], ~fixed[:, 1:])  # background is outside l_csc
