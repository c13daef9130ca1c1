"""The losses of the organ-attention CycleGAN (FLARE 2024 Task 3, section 2.1, eqs. 1-7).

- adversarial losses (eqs. 1, 2, 7): the discriminator maximises log D(real) + log(1 - D(fake)),
  the generator, as is usual and as CycleGAN's code does, minimises -log D(fake) (the
  non-saturating form); ``mode="lsgan"`` uses least squares instead, CycleGAN's own default
  (Zhu et al. 2017, section 4), as an option. Discriminators output logits (PatchGAN maps); every
  patch is one real/fake decision and the loss is their mean;
- cycle consistency (eq. 3): the L1 distance between an image and its round trip;
- organ attention (eqs. 4-6): A = 1 - softmax(S(X))[:, 0], the probability of "any organ" from a
  segmenter S, and the attention-enhanced translation X^{s->t} + A for the local discriminator.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunet_uda.losses.precision import full_precision

GAN_MODES = ("vanilla", "lsgan")


@full_precision
def adversarial_loss(logits: torch.Tensor, real: bool, mode: str = "vanilla") -> torch.Tensor:
    """Mean over patches of -log sigma(l) (``real``) or -log(1 - sigma(l)); lsgan: (l - 1)^2 or l^2."""
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(real)))
    if mode == "lsgan":
        return F.mse_loss(logits, torch.full_like(logits, float(real)))
    raise ValueError(f"unknown GAN loss mode {mode!r}; choose one of {', '.join(GAN_MODES)}")


def discriminator_loss(discriminator, real: torch.Tensor, fake: torch.Tensor, mode: str = "vanilla") -> torch.Tensor:
    """The discriminator's side of eqs. 1, 2, 7, halved as in CycleGAN (it then learns at half the
    generator's rate); ``fake`` is detached, so no gradient reaches the generator."""
    return 0.5 * (adversarial_loss(discriminator(real), True, mode)
                  + adversarial_loss(discriminator(fake.detach()), False, mode))


@full_precision
def cycle_loss(image: torch.Tensor, cycled: torch.Tensor) -> torch.Tensor:
    """Eq. 3, one direction: || G(F(x)) - x ||_1 averaged over pixels."""
    return (cycled - image).abs().mean()


def organ_attention(probabilities: torch.Tensor) -> torch.Tensor:
    """Eqs. 4-5: (B, C, H, W) softmax of the segmenter, background first, to (B, 1, H, W) maps
    1 - p_background in [0, 1]."""
    return 1.0 - probabilities[:, :1]


def attention_enhanced(translated: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Eq. 6: X^{s->t} + A(X^s), the additive fusion the paper uses."""
    return translated + attention
