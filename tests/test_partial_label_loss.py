import math

import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from conftest import on_gloo_ranks
from nnunet_uda.losses.partial_labels import PartialLabelLoss, partial_soft_dice

IGNORE = 4


def batch(seed=0, b=3, c=4, shape=(5, 6, 7), ignore_share=0.2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, *shape, generator=g, requires_grad=True)
    target = torch.randint(0, c, (b, 1, *shape), generator=g)
    target[torch.rand(target.shape, generator=g) < ignore_share] = IGNORE
    return logits, target


@pytest.mark.parametrize("batch_dice", [True, False])
def test_equals_nnunet_loss_when_everything_is_annotated(batch_dice):
    logits, target = batch()
    nnunet = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                            weight_ce=1, weight_dice=1, ignore_label=IGNORE, dice_class=MemoryEfficientSoftDiceLoss)
    ours = PartialLabelLoss(IGNORE, batch_dice)
    annotated = torch.ones(3, 4, dtype=torch.bool)
    torch.testing.assert_close(ours(logits, target, annotated), nnunet(logits, target))


def reference_loss(logits, target, annotated, batch_dice, gamma=0.0, smooth=1e-5):
    """Direct loop transcription: marginal CE (or focal) over voxels of samples annotating a
    foreground class, soft Dice over annotated (sample, class). A voxel labeled with a class its
    sample does not annotate is merged background."""
    b, c = logits.shape[:2]
    probs = torch.softmax(logits, 1)
    labels = target[:, 0].clone()
    for i in range(b):
        for k in range(1, c):
            if not annotated[i, k]:
                labels[i][labels[i] == k] = 0
    ce_terms = []
    for i in range(b):
        if not annotated[i, 1:].any():
            continue
        unannotated = [k for k in range(1, c) if not annotated[i, k]]
        for idx in torch.nonzero(labels[i] != IGNORE):
            v = tuple(idx.tolist())
            t = int(labels[i][v])
            p = probs[i][(slice(None),) + v]
            p_t = p[0] + sum(p[k] for k in unannotated) if t == 0 else p[t]
            ce_terms.append(-(1 - p_t) ** gamma * torch.log(p_t))
    ce = torch.stack(ce_terms).mean()
    valid = (labels != IGNORE).float()
    dices = []
    for k in range(1, c):
        samples = [i for i in range(b) if annotated[i, k]]
        if not samples:
            continue
        terms = [(
            (probs[i, k] * (labels[i] == k) * valid[i]).sum(),
            (probs[i, k] * valid[i]).sum(),
            ((labels[i] == k).float() * valid[i]).sum()) for i in samples]
        if batch_dice:
            inter, pred, gt = (sum(t[j] for t in terms) for j in range(3))
            dices.append((2 * inter + smooth) / (gt + pred + smooth))
        else:
            dices += [(2 * t[0] + smooth) / (t[2] + t[1] + smooth) for t in terms]
    return ce - torch.stack(dices).mean()


@pytest.mark.parametrize("gamma", [0.0, 2.0])
@pytest.mark.parametrize("batch_dice", [True, False])
def test_partial_annotation_matches_loop_reference(batch_dice, gamma):
    logits, target = batch(seed=1, b=4)
    # the last sample annotates no foreground class; labels of unannotated classes stay in the
    # label maps (as in a file holding manual and pseudo labels) and must read as background
    annotated = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    ours = PartialLabelLoss(IGNORE, batch_dice, focal_gamma=gamma)(logits, target, annotated)
    reference = reference_loss(logits, target, annotated, batch_dice, gamma)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_focal_loss_down_weights_easy_voxels():
    logits, target = batch(seed=4)
    annotated = torch.ones(3, 4, dtype=torch.bool)
    ce, focal = (PartialLabelLoss(IGNORE, False, focal_gamma=g)(logits, target, annotated) for g in (0.0, 2.0))
    assert focal < ce


def test_unannotated_class_is_not_penalised_on_background():
    """Predicting an unannotated organ on a 'background' voxel costs nothing in CE."""
    logits = torch.full((1, 3, 2, 2, 2), -10.0)
    logits[:, 2] = 10.0  # confident class 2 everywhere
    target = torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)
    loss = PartialLabelLoss(None, False)
    annotated_all = torch.ones(1, 3, dtype=torch.bool)
    annotated_part = torch.tensor([[True, True, False]])
    assert loss(logits, target, annotated_all) > loss(logits, target, annotated_part) + 5


def test_fully_unlabeled_batch_gives_zero_gradient():
    logits, target = batch(seed=2)
    target[:] = IGNORE
    annotated = torch.zeros(3, 4, dtype=torch.bool)
    annotated[:, 0] = True
    loss = PartialLabelLoss(IGNORE, True)(logits, target, annotated)
    loss.backward()
    assert math.isfinite(loss.item())
    assert logits.grad.abs().sum() == 0


def test_absent_class_and_single_class_are_finite():
    logits, target = batch(seed=3, c=2)
    target[target == 1] = 0  # the only foreground class is absent
    target[target == IGNORE] = 0
    loss = PartialLabelLoss(IGNORE, False)(logits, target, torch.ones(3, 2, dtype=torch.bool))
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logits.grad).all()


def _dice_share(rank):
    """Rank ``rank``'s share (samples 2r, 2r + 1) of one batch: its batch Dice and the gradient of its probs."""
    probs, target, annotated, valid = _dice_batch()
    share = slice(2 * rank, 2 * rank + 2)
    mine = probs[share].clone().requires_grad_()
    loss = partial_soft_dice(mine, target[share], annotated[share], valid[share], batch_dice=True)
    loss.backward()
    return loss.detach(), mine.grad


def _dice_batch():
    g = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.randn(4, 3, 4, 5, 6, generator=g), 1)
    annotated = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]]).bool()
    return probs, torch.randint(0, 3, (4, 4, 5, 6), generator=g), annotated, torch.rand(4, 4, 5, 6, generator=g) > 0.1


def test_batch_dice_pools_the_samples_of_two_gloo_ranks(tmp_path):
    """As nnU-Net's batch Dice under DDP: every rank's loss is the whole batch's, and its gradient summed by DDP's
    all-reduce and divided by the world size (2) is the whole batch's gradient of its samples."""
    probs, target, annotated, valid = _dice_batch()
    probs.requires_grad_()
    expected = partial_soft_dice(probs, target, annotated, valid, batch_dice=True)
    expected.backward()
    ranks = on_gloo_ranks(_dice_share, tmp_path)
    for rank, (loss, grad) in enumerate(ranks):
        torch.testing.assert_close(loss, expected.detach())
        torch.testing.assert_close(grad / 2, probs.grad[2 * rank:2 * rank + 2])
    assert not torch.allclose(_dice_share(0)[0], expected.detach())  # alone, a rank's batch Dice differs
