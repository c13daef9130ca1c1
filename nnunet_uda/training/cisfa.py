"""nnUNetTrainerCISFA: contrastive image synthesis and self-supervised feature adaptation (Hu et al., WACV 2023).

The recipe (section 3), each iteration in the order of section 3.4, G -> Seg -> D_g and D_s:

1. G (eq. 4): fool D_g with G(x_a), plus L_pcl (eqs. 2-3) between x_a and G(x_a) at five generator layers,
   patches weighted by y_a (w = 2);
2. Seg (eq. 6) on G's fresh output: nnU-Net's Dice + CE of Seg(G(x_a)) against y_a under deep supervision (for
   the paper's Dice term), + L_gcl (eq. 5) between Seg's pooled bottleneck features of x_a and of G(x_a),
   + lambda_adv x fooling D_s with softmax(Seg(G(x_a))), lambda_adv = 0.001 (the paper: 1, see below);
3. D_g (eq. 1): real target slices x_b against G(x_a); D_s (eq. 7): softmax(Seg(x_b)) against
   softmax(Seg(G(x_a))), both from the fresh Seg.

- data: the base trainer's mixed batches, target cases first, labeled source cases last; G translates into one
  target domain (the paper's CT -> MRI): ``nnUNet_uda_target_domain`` if set, else the domain table's first
  target; the cases of other target domains are not drawn;
- augmentation after translation: the loader gives un-augmented crops, every case cropped alike (no foreground
  oversampling); G, its losses and D_g work on them, as the paper's un-augmented slices, and nnU-Net's training
  transforms are applied to the translation (with its source patch, one spatial draw) and to the target patch
  before Seg and D_s see them, as nnU-Net trained on translated images sees them (augmenting before G made Seg
  fit poorly: docs/methods/cisfa.md#augmentation-after-translation);
- dimensionality: G and D_g work on 2D images: in ``2d`` the patches, in ``3d_fullres`` the axial slices of the
  3D patch (the image's first axis, wherever nnU-Net's transpose put it); Seg and D_s see the configuration's
  patches (a 3D PatchGAN in ``3d_fullres``). In ``3d_fullres`` G's losses and D_g see ``generator_slices``
  slices drawn per patch each iteration (the paper's batch of 2D slices), Seg the whole translated patch;
- the crops' padding: G translates the box of the batch's crops that holds image (nnU-Net pads crops beyond the
  image, label -1); its tanh output is z-scored per patch over the image and set to 0 in the padding, as nnU-Net
  would normalise and crop a translated image, before Seg, D_g and the patch contrast see it; D_g sees the same box;
- optimisers: Adam 2e-4, (0.5, 0.999), constant, for G with its patch heads, D_g and D_s (the paper's); Seg
  with its global head keeps nnU-Net's SGD and poly schedule; the GAN losses are the paper's log losses
  (non-saturating for the players);
- eq. 6's adversarial term is weighted by ``seg_adversarial_weight`` = 0.001 (AdaptSegNet's lambda_adv for a
  PatchGAN on the segmenter's softmax maps), not 1: at 1 it kept Seg from fitting even the translated source
  (the authors' code adds D_s's own loss instead, so their results come without a fooling term);
- DDP: G, D_g, D_s and the heads start from rank 0's weights and their gradients are averaged over the ranks
  before each step (G's losses call ``generator.encode``, outside any DDP wrapper's forward);
- every network, head and optimiser is in the checkpoint; at the end ``generator_final.pth`` is written in
  the CycleGAN's format for ``nnUNetv2_uda_translate``; previews of source, translation, target and labels
  each epoch (``cisfa_preview.png``).

Variants: Table 1's unweighted patch contrast, Table 3's rows. Details and measurements: docs/methods/cisfa.md.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from nnunet_uda.distributed import broadcast_parameters
from nnunet_uda.gan.losses import adversarial_loss, discriminator_loss
from nnunet_uda.gan.networks import PatchDiscriminator, ResnetGenerator, init_weights
from nnunet_uda.gan.training import FINAL, CycleGANSettings, save_atomically
from nnunet_uda.losses.patch_nce import global_contrast, layered_patch_nce
from nnunet_uda.nn.projection import ProjectionHead
from nnunet_uda.training.base import nnUNetTrainerUDA

TARGET_DOMAIN_ENV = "nnUNet_uda_target_domain"


def discriminator_depth(size: int) -> int:
    """PatchGAN layers a side of ``size`` pixels supports: 3 (70-pixel patches) from 24, 2 from 12, else 1."""
    return 3 if size >= 24 else 2 if size >= 12 else 1


def zscore(x: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Each sample of ``x`` (B, C, *s) to zero mean and unit variance over the voxels ``inside`` (B, 1, *s) holds,
    0 elsewhere: nnU-Net's ZScoreNormalization of an image, then its padding of the crop."""
    dims = tuple(range(1, x.ndim))
    inside = inside.expand_as(x).to(x.dtype)
    count = inside.sum(dims, keepdim=True).clamp_min(2)
    mean = (x * inside).sum(dims, keepdim=True) / count
    std = (((x - mean) * inside) ** 2).sum(dims, keepdim=True).div(count - 1).sqrt().clamp_min(1e-8)
    return (x - mean) / std * inside


def image_box(labels: torch.Tensor) -> tuple[slice, ...]:
    """The smallest box of a batch of crops (B, 1, *s) holding every sample's image (nnU-Net's loader pads crops
    beyond the image with label -1), as an index for (B, C, *s) tensors."""
    inside = (labels >= 0).flatten(0, 1).any(0)
    box = [slice(None), slice(None)]
    for axis in range(inside.ndim):
        found = inside.any(dim=tuple(a for a in range(inside.ndim) if a != axis)).nonzero()[:, 0]
        box.append(slice(int(found[0]), int(found[-1]) + 1) if found.numel() else slice(None))
    return tuple(box)


class nnUNetTrainerCISFA(nnUNetTrainerUDA):
    use_conditional_norm = False
    augment_in_train_step = True
    #: the generator (the paper's ResNet generator: 64 filters, 9 residual blocks)
    generator_width = 64
    generator_blocks = 9
    #: in ``3d_fullres``: slices per patch that eqs. 1-4 see each iteration (the paper's batch: 4 slices)
    generator_slices = 4
    #: eq. 2-4: weight w of foreground patches (1: unweighted), temperature, patches per layer, head size
    patch_weight = 2.0
    patch_tau = 0.2
    patches_per_layer = 256
    patch_dim = 128
    #: eq. 5: temperature and head size
    global_tau = 0.2
    global_dim = 128
    #: Table 3: which contrast terms, and L_gcl stepped before the rest of Seg's loss ("sequential")
    use_pcl = True
    use_gcl = True
    #: eq. 6: weight of fooling D_s (module docstring)
    seg_adversarial_weight = 1e-3
    sequential_gcl = False
    gan_lr = 2e-4
    gan_betas = (0.5, 0.999)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.n_target = 0  # target samples at the start of every batch (batch_pools)
        self._preview = None

    # ------------------------------------------------------------------ networks
    def configure_optimizers(self):
        """G, D_g, D_s and the heads are built here, beside nnU-Net's segmenter and its optimiser; the global head
        joins the segmenter's optimiser."""
        optimizer, scheduler = super().configure_optimizers()
        patch = self.configuration_manager.patch_size
        self.slice_axis = None if len(patch) == 2 else list(self.plans_manager.transpose_forward).index(0)
        slice_size = [s for i, s in enumerate(patch) if i != self.slice_axis]
        classes = self.label_manager.num_segmentation_heads
        self.generator = ResnetGenerator(self.num_input_channels, self.num_input_channels, self.generator_width,
                                         self.generator_blocks)
        self.d_image = PatchDiscriminator(self.num_input_channels, n_layers=discriminator_depth(min(slice_size)))
        self.d_seg = PatchDiscriminator(classes, n_layers=discriminator_depth(min(patch)), dims=len(patch))
        for network in (self.generator, self.d_image, self.d_seg):
            init_weights(network)
        with torch.no_grad():
            channels = [f.shape[1] for f in self.generator.encode(torch.zeros(1, self.num_input_channels, 16, 16))]
        self.patch_heads = torch.nn.ModuleList(ProjectionHead(c, self.patch_dim, hidden=self.patch_dim)
                                               for c in channels)
        bottleneck = self.configuration_manager.network_arch_init_kwargs["features_per_stage"][-1]
        self.global_head = ProjectionHead(bottleneck, self.global_dim, hidden=2 * self.global_dim)
        for module in (self.generator, self.d_image, self.d_seg, self.patch_heads, self.global_head):
            module.to(self.device)
        broadcast_parameters(self.generator, self.d_image, self.d_seg, self.patch_heads, self.global_head)
        optimizer.add_param_group({"params": list(self.global_head.parameters())})
        adam = dict(lr=self.gan_lr, betas=self.gan_betas)
        self.optimizer_g = torch.optim.Adam([*self.generator.parameters(), *self.patch_heads.parameters()], **adam)
        self.optimizer_d = torch.optim.Adam([*self.d_image.parameters(), *self.d_seg.parameters()], **adam)
        for name, obj in (("generator", self.generator), ("d_image", self.d_image), ("d_seg", self.d_seg),
                          ("patch_heads", self.patch_heads), ("global_head", self.global_head),
                          ("optimizer_g", self.optimizer_g), ("optimizer_d", self.optimizer_d)):
            self.register_state(name, obj)
        return optimizer, scheduler

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        for module in (self.generator, self.d_image, self.d_seg, self.patch_heads, self.global_head):
            module.train()

    # ------------------------------------------------------------------ slices
    def to_slices(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *s) patches to the (N, C, h, w) images G and D_g work on."""
        if self.slice_axis is None:
            return x
        x = x.movedim(2 + self.slice_axis, 1)
        return x.reshape(-1, *x.shape[2:])

    def from_slices(self, slices: torch.Tensor, batch: int) -> torch.Tensor:
        if self.slice_axis is None:
            return slices
        return slices.reshape(batch, -1, *slices.shape[1:]).movedim(1, 2 + self.slice_axis)

    def slice_subset(self, *patches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The ``patches`` (B, C, *s) with :attr:`generator_slices` of their slices, one draw for all of them and
        every sample (unchanged in ``2d`` and for patches of no more slices)."""
        axis = None if self.slice_axis is None else 2 + self.slice_axis
        if axis is None or patches[0].shape[axis] <= self.generator_slices:
            return patches
        picked = torch.randperm(patches[0].shape[axis], device=patches[0].device)[:self.generator_slices].sort().values
        return tuple(x.index_select(axis, picked) for x in patches)

    def translate(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """G(x) slice by slice, z-scored per patch over the image and 0 where nnU-Net padded the crop (label -1),
        as nnU-Net crops a translated image (module docstring)."""
        return zscore(self.from_slices(self.generator(self.to_slices(x)), x.shape[0]), labels >= 0)

    # ------------------------------------------------------------------ batches
    @property
    def target_domain(self) -> str:
        """The domain G translates into: ``nnUNet_uda_target_domain`` if set, else the table's first target."""
        targets = self.domain_table.target
        domain = os.environ.get(TARGET_DOMAIN_ENV) or targets[0]
        if domain not in targets:
            raise RuntimeError(f"{TARGET_DOMAIN_ENV}={domain} is not a target domain of this dataset; its target "
                               f"domains are {', '.join(targets)}")
        return domain

    def batch_pools(self, training_cases):
        pools = super().batch_pools(training_cases)
        if len(pools) != 2:
            raise RuntimeError(f"{self.__class__.__name__} needs labeled source and unlabeled target training cases in "
                               f"fold {self.fold}; see docs/datasets.md")
        (target, self.n_target), source = pools
        domain = self.target_domain
        kept = self.training_cases_of([domain], target)
        if not kept:
            raise RuntimeError(f"fold {self.fold} has no training case of the target domain {domain}; choose another "
                               f"with {TARGET_DOMAIN_ENV}")
        if len(kept) < len(target):
            self.print_to_log_file(f"G translates into {domain}: the {len(target) - len(kept)} training "
                                   f"cases of the other target domains are not drawn (choose the domain with "
                                   f"{TARGET_DOMAIN_ENV})")
        return [(kept, self.n_target), source]

    # ------------------------------------------------------------------ one iteration (section 3.4)
    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)  # un-augmented, nnU-Net's initial patch size
        labels = batch["target"].to(self.device, non_blocking=True)
        t, keys = self.n_target, batch["keys"]
        box = image_box(labels)  # G, its losses and D_g see the images, not the crops' padding
        images, image_labels = data[box], labels[box]
        x_b, x_a, y_a = images[:t], images[t:], image_labels[t:]
        annotated = self.batch_annotations(keys[t:])
        with self.autocast():
            loss_g = self.generator_loss(x_a, y_a)
        self.optimizer_g.zero_grad(set_to_none=True)
        self.optimizer_step(loss_g, self.optimizer_g, [], averaged=self.parameters_of(self.optimizer_g))
        with torch.no_grad(), self.autocast():
            fake = self.translate(x_a, y_a).float()  # G's fresh output
        crop_fake = torch.zeros_like(data[t:])
        crop_fake[box] = fake
        seen_b, seen_a, seen_fake, seen_labels = self.augment(data[:t], labels[:t], data[t:], crop_fake, labels[t:])
        head = list(self.global_head.parameters())  # in Seg's optimiser, outside Seg's DDP wrapper
        if self.sequential_gcl and self.use_gcl:
            self.optimizer.zero_grad(set_to_none=True)
            with self.autocast():
                loss_gcl = self.global_loss(seen_a, seen_fake)
            self.optimizer_step(loss_gcl, self.optimizer, self.clipping_groups(), averaged=head)
        with self.autocast():
            loss_seg = self.segmenter_loss(seen_a, seen_fake, seen_labels, annotated)
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_step(loss_seg, self.optimizer, self.clipping_groups(), averaged=head)
        with self.autocast():
            loss_d = self.discriminator_losses(x_b, fake, seen_b, seen_fake)
        self.optimizer_d.zero_grad(set_to_none=True)
        self.optimizer_step(loss_d, self.optimizer_d, [], averaged=self.parameters_of(self.optimizer_d))
        self.counters.values["iterations"] += 1
        self._preview = (x_a[:1].detach(), fake[:1].detach(), x_b[:1].detach(), y_a[:1].detach())
        return {"loss": loss_seg.detach().cpu().numpy()}

    def augment(self, x_b, y_b, x_a, fake, y_a):
        """nnU-Net's training transforms, per sample, after the translation, as nnU-Net trained on translated
        images sees them: each target patch alone, each source patch with its translation as one two-channel image
        (one spatial draw for eq. 5's pair; intensities drawn per channel). Returns the target patches, the source
        patches, their translations (final patch size) and the translations' deep-supervision labels."""
        samples = [*zip(x_b, y_b), *((torch.cat((f, x)), y) for f, x, y in zip(fake, x_a, y_a))]
        out = [self.training_transforms(image=x.cpu(), segmentation=y.cpu()) for x, y in samples]
        images = [o["image"].to(self.device, non_blocking=True) for o in out]
        segs = [o["segmentation"] if isinstance(o["segmentation"], list) else [o["segmentation"]] for o in out]
        t, c = x_b.shape[0], x_a.shape[1]
        pairs = torch.stack(images[t:])
        targets = [torch.stack(scale).to(self.device, non_blocking=True) for scale in zip(*segs[t:])]
        return torch.stack(images[:t]), pairs[:, c:], pairs[:, :c], targets

    @staticmethod
    def parameters_of(optimizer) -> list[torch.nn.Parameter]:
        return [p for group in optimizer.param_groups for p in group["params"]]

    def generator_loss(self, x_a: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Eq. 4 on the slices of :meth:`slice_subset`: fool D_g with G(x_a), plus the weighted patch contrast
        between x_a and G(x_a)."""
        x_a, labels = self.slice_subset(x_a, labels)
        source = self.to_slices(x_a)
        fake = self.to_slices(self.translate(x_a, labels))
        terms = {"g_gan": adversarial_loss(self.d_image(fake), True)}
        if self.use_pcl:
            terms["pcl"] = layered_patch_nce(
                self.generator.encode(source), self.generator.encode(fake), self.patch_heads, self.to_slices(labels),
                self.patches_per_layer, self.patch_weight, self.patch_tau, self.label_manager.ignore_label)
        return self._logged(terms)

    def global_loss(self, x_a: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Eq. 5 on the pooled bottleneck features of x_a and G(x_a) through the global head."""
        output = self.network(torch.cat((x_a, fake)), return_features=True)
        pooled = self.global_features(output.encoder[-1])
        loss = self._logged({"gcl": global_contrast(*pooled.chunk(2), self.global_tau)})
        if self.is_ddp:  # DDP expects a gradient for every parameter: the decoder's, zero
            loss = loss + 0 * sum(x.float().sum() for x in output.logits)
        return loss

    def global_features(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """The global head on average-pooled bottleneck features: one vector per image in ``2d``; in ``3d_fullres``
        one per slab of the bottleneck along the slice axis (a batch of two 3D patches would hold one pair and no
        negative; slabs give eq. 5 several pairs per case), in sample order."""
        if self.slice_axis is None:
            return self.global_head(bottleneck.flatten(2).mean(-1))
        slabs = bottleneck.movedim(2 + self.slice_axis, 1)
        return self.global_head(slabs.flatten(3).mean(-1).flatten(0, 1))

    def segmenter_loss(self, x_a, fake, labels, annotated) -> torch.Tensor:
        """Eq. 6: supervised on G(x_a), L_gcl (unless stepped before), fool D_s with softmax(Seg(G(x_a))) (weighted
        by :attr:`seg_adversarial_weight`)."""
        batch = torch.cat((fake, x_a)) if self.use_gcl and not self.sequential_gcl else fake
        output = self.network(batch, return_features=True)
        logits = output.logits if isinstance(output.logits, list) else [output.logits]
        n = fake.shape[0]
        terms = {"sup": self.supervised_loss([x[:n] for x in logits], labels, annotated),
                 "s_gan": adversarial_loss(self.d_seg(torch.softmax(logits[0][:n].float(), 1)), True)}
        if self.use_gcl and not self.sequential_gcl:
            pooled = self.global_features(output.encoder[-1])
            half = pooled.shape[0] // 2
            terms["gcl"] = global_contrast(pooled[half:], pooled[:half], self.global_tau)
        return self._logged(terms, {"s_gan": self.seg_adversarial_weight})

    def discriminator_losses(self, x_b: torch.Tensor, fake: torch.Tensor, seen_b: torch.Tensor,
                             seen_fake: torch.Tensor) -> torch.Tensor:
        """Eqs. 1 and 7 on fresh outputs: D_g real target slices ``x_b`` against G(x_a) ``fake`` (both as G sees
        them), D_s softmax(Seg(x_b)) against softmax(Seg(G(x_a))) on the patches Seg saw (``seen_*``); neither
        reaches G or Seg."""
        with torch.no_grad():
            maps = torch.softmax(self._logits(self.network(torch.cat((seen_b, seen_fake)))).float(), 1)
        t = x_b.shape[0]
        real_slices, fake_slices = (self.to_slices(self.slice_subset(x)[0]) for x in (x_b, fake))
        return self._logged({"d_image": discriminator_loss(self.d_image, real_slices, fake_slices),
                             "d_seg": discriminator_loss(self.d_seg, maps[:t], maps[t:])})

    @staticmethod
    def _logits(output):
        return output[0] if isinstance(output, (list, tuple)) else output

    def _logged(self, terms: dict[str, torch.Tensor], weights: dict[str, float] | None = None) -> torch.Tensor:
        """Log each term unweighted; return their sum with ``weights`` (default 1)."""
        weights = weights or {}
        for name, value in terms.items():
            self.log_scalar(f"l_{name}", value)
        return sum(weights.get(name, 1.0) * value for name, value in terms.items())

    # ------------------------------------------------------------------ outputs
    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)
        if self.local_rank == 0 and self._preview is not None:
            self.write_preview(self.output_folder + "/cisfa_preview.png")

    def write_preview(self, path: str) -> None:
        """The middle slice of the last batch's first source case, its translation, a target case, the labels."""
        from matplotlib.figure import Figure

        images = [self.to_slices(x.float())[0 if self.slice_axis is None else x.shape[2 + self.slice_axis] // 2]
                  for x in self._preview]
        figure = Figure(figsize=(8.8, 2.4))
        titles = ("source", "translation", "target", "labels on translation")
        for i, (title, image) in enumerate(zip(titles, images)):
            ax = figure.add_subplot(1, 4, i + 1)
            ax.imshow((images[1] if i == 3 else image)[0].cpu().numpy(), cmap="gray")
            if i == 3:
                label = image[0].cpu().numpy()
                ax.imshow(np.ma.masked_less_equal(label, 0), cmap="tab10", alpha=0.5, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        figure.tight_layout()
        figure.savefig(path, dpi=90)

    def on_train_end(self):
        super().on_train_end()
        if self.local_rank == 0:
            settings = CycleGANSettings(width=self.generator_width, n_blocks=self.generator_blocks)
            folder = Path(self.output_folder)
            save_atomically({"settings": asdict(settings), "generator": self.generator.state_dict(),
                             "input": "zscore"}, folder / FINAL)
            translation = {"source_domain": self.domain_table.source[0], "target_domain": self.target_domain,
                           "trainer": type(self).__name__}
            (folder / "translation.json").write_text(json.dumps(translation, indent=2) + "\n")


class nnUNetTrainerCISFA_noWeight(nnUNetTrainerCISFA):
    """Table 1, CISFA (no weight): unweighted patch contrast."""
    patch_weight = 1.0


class nnUNetTrainerCISFA_noPCL(nnUNetTrainerCISFA):
    """Table 3: without the patch contrast."""
    use_pcl = False


class nnUNetTrainerCISFA_noGCL(nnUNetTrainerCISFA):
    """Table 3: without the global contrast."""
    use_gcl = False


class nnUNetTrainerCISFA_noContrast(nnUNetTrainerCISFA):
    """Table 3's first row: neither contrast (G fooling D_g, Seg fooling D_s, the supervised term)."""
    use_pcl = False
    use_gcl = False


class nnUNetTrainerCISFA_Sequential(nnUNetTrainerCISFA):
    """Table 3, "sequential": the encoder stepped on L_gcl before the rest of Seg's loss, every iteration."""
    sequential_gcl = True
