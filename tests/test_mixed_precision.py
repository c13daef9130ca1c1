"""Every loss of the plugin in full precision under autocast (nnunet_uda.losses.precision): with CPU autocast to
bfloat16 and half-precision inputs, as a network under autocast emits them, each loss gives float32 values equal to
those of the same inputs in float32 without autocast; without the decorator the contrastive ones would not."""
import pytest
import torch

from nnunet_uda.gan.losses import adversarial_loss, cycle_loss
from nnunet_uda.losses.cross_pseudo import cross_pseudo_supervision
from nnunet_uda.losses.dacl import knn_density, soft_contrast
from nnunet_uda.losses.dvcl import dvcl_loss
from nnunet_uda.losses.hqcl import hqcl_loss
from nnunet_uda.losses.partial_labels import PartialLabelLoss
from nnunet_uda.losses.patch_contrast import patch_contrastive_loss
from nnunet_uda.losses.patch_nce import global_contrast, patch_nce
from nnunet_uda.losses.structural_consistency import structural_consistency_loss


def randn(*shape):
    return torch.randn(*shape)


def softmax(*shape):
    return torch.softmax(3 * torch.randn(*shape), 1)


def true(*shape):
    return torch.ones(*shape, dtype=torch.bool)


CASES = {
    "partial_labels": lambda: (PartialLabelLoss(None, True, 2.0), randn(2, 4, 6, 6, 6),
                               torch.randint(0, 4, (2, 1, 6, 6, 6)), torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1]]).bool()),
    "cross_pseudo": lambda: (cross_pseudo_supervision, randn(2, 4, 6, 6, 6), randn(2, 4, 6, 6, 6)),
    "patch_contrast": lambda: (patch_contrastive_loss, randn(2, 3, 64), true(2, 3), 0.07),
    "structural_consistency": lambda: (structural_consistency_loss, softmax(2, 4, 6, 6, 6), torch.tensor([0, 1]),
                                       true(2, 3), 0.1, None, "dice"),
    "hqcl": lambda: (hqcl_loss, randn(3, 8, 16), true(3, 8), randn(3, 16), true(3), randn(3, 8, 5, 16), true(3, 8, 5)),
    "dvcl": lambda: (dvcl_loss, randn(12, 16), softmax(12, 4), randn(40, 16), softmax(40, 4), 4, 4, 8),
    "dacl_density": lambda: (knn_density, randn(3, 20, 16), true(3, 20), randn(3, 30, 16), true(3, 30)),
    "dacl_contrast": lambda: (soft_contrast, randn(3, 8, 16), true(3, 8), randn(3, 16), true(3), randn(3, 20, 16),
                              true(3), 0.4, torch.rand(3, 8)),
    "patch_nce": lambda: (patch_nce, randn(2, 32, 64), randn(2, 32, 64), torch.rand(2, 32), 0.07),
    "global_contrast": lambda: (global_contrast, randn(4, 32), randn(4, 32), 0.2),
    "gan_vanilla": lambda: (adversarial_loss, randn(2, 1, 8, 8), True, "vanilla"),
    "gan_lsgan": lambda: (adversarial_loss, randn(2, 1, 8, 8), False, "lsgan"),
    "cycle": lambda: (cycle_loss, randn(2, 1, 8, 8), randn(2, 1, 8, 8)),
}


def half_and_reference(args):
    """The arguments as a bfloat16 network output gives them, and the same values in float32."""
    half = [a.bfloat16() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    return half, [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in half]


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_is_float32_and_unchanged_under_bfloat16_autocast(name):
    torch.manual_seed(0)
    loss, *args = CASES[name]()
    half, reference = half_and_reference(args)
    expected = loss(*reference)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(*half)
    assert value.dtype == torch.float32, name
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)


def test_without_full_precision_a_contrastive_loss_changes_under_autocast():
    """The check above can fail: undecorated, l_fpc's cosine logits are computed in bfloat16."""
    torch.manual_seed(0)
    _, embeddings, present, tau = CASES["patch_contrast"]()
    half, reference = half_and_reference([embeddings])
    expected = patch_contrastive_loss(reference[0], present, tau)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = patch_contrastive_loss.__wrapped__(half[0], present, tau)
    assert value.dtype == torch.bfloat16 and not torch.allclose(value.float(), expected, rtol=1e-6, atol=1e-6)
