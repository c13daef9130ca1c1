"""The organ-attention CycleGAN (FLARE 2024 Task 3, section 2.1): two generators, a discriminator
per domain, and a local discriminator for attention-enhanced translations.

One training step (:meth:`OrganAttentionCycleGAN.train_step`), the recipe of CycleGAN with eq. 7:

1. generators: G_t(X^s) = X^{s->t}, G_s(X^t) = X^{t->s} and their round trips; the generators
   minimise the adversarial terms of eqs. 1-2 against D_t and D_s, lambda_cycle times eq. 3 and,
   with attention, the adversarial term of eq. 7 against D_t^local on X^{s->t} + A(X^s);
2. discriminators, with the generators' outputs detached and drawn through history pools: D_t on
   real target against X^{s->t}, D_s on real source against X^{t->s}, D_t^local on real target
   against X^{s->t} + A (eq. 7 compares the enhanced translation with plain real target slices).

Adam with lr 2e-4 and betas (0.5, 0.999) for both groups (CycleGAN's; the paper keeps CycleGAN's
set-up). lambda_cycle = 10 is CycleGAN's default; the paper gives no value. Attention comes from
outside (:func:`~nnunet_uda.gan.losses.organ_attention` of a segmenter's softmax, computed once per
source volume because the segmenter is fixed); ``attention=False`` is the ablation without it.
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_uda.gan.losses import adversarial_loss, attention_enhanced, cycle_loss, discriminator_loss
from nnunet_uda.gan.networks import PatchDiscriminator, ResnetGenerator, init_weights
from nnunet_uda.gan.pool import ImagePool


class OrganAttentionCycleGAN(nn.Module):
    def __init__(self, attention: bool = True, width: int = 64, n_blocks: int = 9, discriminator_layers: int = 3,
                 lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999), lambda_cycle: float = 10.0,
                 gan_mode: str = "vanilla", pool_size: int = 50):
        super().__init__()
        self.attention, self.lambda_cycle, self.gan_mode = attention, lambda_cycle, gan_mode
        self.g_target = ResnetGenerator(width=width, n_blocks=n_blocks)  # G_t: source -> target
        self.g_source = ResnetGenerator(width=width, n_blocks=n_blocks)  # G_s: target -> source
        self.d_target = PatchDiscriminator(width=width, n_layers=discriminator_layers)
        self.d_source = PatchDiscriminator(width=width, n_layers=discriminator_layers)
        self.d_local = PatchDiscriminator(width=width, n_layers=discriminator_layers) if attention else None
        init_weights(self)
        generators = [*self.g_target.parameters(), *self.g_source.parameters()]
        self.optimizer_g = torch.optim.Adam(generators, lr=lr, betas=betas)
        self.optimizer_d = torch.optim.Adam(self.discriminator_parameters(), lr=lr, betas=betas)
        self.pools = {name: ImagePool(pool_size) for name in ("target", "source", "local")}

    @property
    def discriminators(self) -> list[nn.Module]:
        return [d for d in (self.d_target, self.d_source, self.d_local) if d is not None]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [p for d in self.discriminators for p in d.parameters()]

    def train_step(self, source: torch.Tensor, target: torch.Tensor,
                   attention: torch.Tensor | None = None) -> dict[str, float]:
        """One update of both generators and all discriminators on (B, 1, H, W) slices in [-1, 1];
        ``attention`` (B, 1, H, W) A(X^s) of the source slices, required when attention is on."""
        if self.attention and attention is None:
            raise ValueError("the organ-attention CycleGAN needs the source slices' attention maps A(X^s) "
                             "(eq. 5); pass attention, or build the model with attention=False")
        to_target = self.g_target(source)
        to_source = self.g_source(target)
        losses = {"gan_target": adversarial_loss(self.d_target(to_target), True, self.gan_mode),
                  "gan_source": adversarial_loss(self.d_source(to_source), True, self.gan_mode),
                  "cycle": cycle_loss(source, self.g_source(to_target)) + cycle_loss(target, self.g_target(to_source))}
        if self.attention:
            enhanced = attention_enhanced(to_target, attention)
            losses["gan_local"] = adversarial_loss(self.d_local(enhanced), True, self.gan_mode)
        generator_loss = sum(self.lambda_cycle * v if k == "cycle" else v for k, v in losses.items())
        for d in self.discriminators:
            d.requires_grad_(False)
        self.optimizer_g.zero_grad(set_to_none=True)
        generator_loss.backward()
        self.optimizer_g.step()
        for d in self.discriminators:
            d.requires_grad_(True)
        losses["d_target"] = discriminator_loss(self.d_target, target, self.pools["target"].query(to_target),
                                                self.gan_mode)
        losses["d_source"] = discriminator_loss(self.d_source, source, self.pools["source"].query(to_source),
                                                self.gan_mode)
        if self.attention:
            losses["d_local"] = discriminator_loss(self.d_local, target, self.pools["local"].query(enhanced),
                                                   self.gan_mode)
        self.optimizer_d.zero_grad(set_to_none=True)
        sum(v for k, v in losses.items() if k.startswith("d_")).backward()
        self.optimizer_d.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def training_state(self) -> dict:
        """Everything a resumed training needs: weights, both optimisers and the history pools."""
        return {"model": self.state_dict(), "optimizer_g": self.optimizer_g.state_dict(),
                "optimizer_d": self.optimizer_d.state_dict(),
                "pools": {k: p.state_dict() for k, p in self.pools.items()}}

    def load_training_state(self, state: dict) -> None:
        self.load_state_dict(state["model"])
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
        for k, p in self.pools.items():
            p.load_state_dict(state["pools"][k])
