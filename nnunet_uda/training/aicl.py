"""nnUNetTrainerAICL: adaptive inter-organ contrastive learning (Sun et al., MIDL 2026).

The recipe (paper section 2, eq. 6)::

    l_total = lambda_sup l_sup + lambda_supUL(t) l_supUL + lambda_csc(t) l_csc + lambda_fpc(t) l_fpc

- data: modality pairs of one subject where the domain table names subjects (twin batches: each
  target case with its source twin, cropped and augmented together, as the paper's registered
  pairs), else batches that mix target and source cases of different subjects;
- network: nnU-Net's U-Net (ResEnc by default) whose encoder norms are conditional on the
  modality (eq. 1), one forward pass giving logits and encoder features;
- l_sup: focal + Dice against the hand-drawn classes of each case (section 2.3); l_supUL: the same
  against the initial pseudo labels of the classes without manual labels (the domain table's label
  sources); both under nnU-Net's deep supervision;
- l_fpc (eq. 4) on PGPS organ cuboids (eqs. 2-3) of the encoder features at 1/4 resolution,
  centred by the network's own detached soft predictions;
- l_csc (eq. 5) between the image-scale soft predictions of the two modalities of each pair (without
  pairs: of every two samples of different modalities);
- schedules (section 3.2): lambda_supUL = 1 - r(t), lambda_csc = r(t), lambda_fpc = 0.5 r(t),
  r(t) = min(1, max(0, (t - 10) / 20)), t in nnU-Net epochs (fractional, per iteration).

Adaptations to nnU-Net, each measured on the phantom (docs/methods/aicl.md, "Adaptations to nnU-Net,
in detail" and "Measured"); every weight and constant is a class attribute a variant can change:

- the paper's Adam, learning rate 1e-4 held constant, weight decay 1e-5 (``paper_optimizer``), not
  nnU-Net's SGD and poly schedule, under which the soft-Dice l_csc diverged;
- contrast features from the encoder stage at cumulative stride 4 (the paper's H/4 x W/4 x D/4);
  PGPS cuboid size planned from the training labels (``plans["uda"]["pgps"]``) unless
  ``pgps_patch_size`` is set;
- twin batches carry a pair through nnU-Net's transforms as one two-channel sample; without pairs,
  mirroring is drawn once per batch (``batch_mirroring``);
- phi of l_csc is the soft Dice 2 <a, b> / (|a|^2 + |b|^2) in the InfoNCE form exp(phi / 0.1)
  (``csc_similarity``, ``csc_temperature``): eq. 5 as printed, with the cosine, is minimised by faint
  copies of the twin's maps;
- l_csc holds, per organ, the maps of the samples whose labels for it are hand-drawn (``csc_anchors``);
- focal gamma 2 without alpha, tau 0.07 for l_fpc (the paper gives neither);
- in nnU-Net's ``2d`` configuration PGPS cuts squares of the 2D feature maps around each organ's
  in-slice centre, their size planned from the organs' per-slice extents (the paper is 3D).
"""
from __future__ import annotations

import torch

from nnunet_uda.losses.patch_contrast import patch_contrastive_loss
from nnunet_uda.losses.structural_consistency import contrast_classes, fixed_maps, structural_consistency_loss
from nnunet_uda.nn.organ_patches import OrganPatchSampler
from nnunet_uda.organ_extents import contrast_stage, pgps_patch_size, planned_pgps
from nnunet_uda.planning import PLANS_KEY
from nnunet_uda.training.base import nnUNetTrainerUDA

#: the choices of ``nnUNetTrainerAICL.csc_anchors``
CSC_ANCHORS = ("source", "labeled", None)


def ramp(t: float, start: float, length: float) -> float:
    """min(1, max(0, (t - start) / length)); a step at ``start`` when ``length`` is 0."""
    if length <= 0:
        return float(t >= start)
    return min(1.0, max(0.0, (t - start) / length))


class nnUNetTrainerAICL(nnUNetTrainerUDA):
    focal_gamma = 2.0
    #: modality pairs of one subject where the domain table has them (module docstring)
    twin_batches = None
    batch_mirroring = True
    #: the paper's Adam 1e-4 rather than nnU-Net's SGD (module docstring)
    paper_optimizer = True
    #: maps l_csc holds fixed: "labeled" (per organ, the hand-labeled samples'), "source" (the source
    #: modality's), or None (none, as eq. 5 prints it); see the module docstring
    csc_anchors: str | None = "labeled"
    #: l_csc scores exp(phi / tau) with this tau; None: phi itself, as eq. 5 prints it (module docstring)
    csc_temperature: float | None = 0.1
    #: phi of l_csc: "dice", the amplitude-aware soft Dice, or "cosine" as eq. 5 prints it (module docstring)
    csc_similarity = "dice"
    lambda_sup = 1.0
    #: maxima of the ramped weights (section 3.2)
    lambda_supUL_max = 1.0
    lambda_csc_max = 1.0
    lambda_fpc_max = 0.5
    #: warm-up (10) and ramp length T (20), in epochs
    warmup_epochs = 10.0
    rampup_epochs = 20.0
    temperature = 0.07
    use_fpc = True
    use_csc = True
    #: PGPS cuboid size at the feature resolution (odd per axis); None: planned, else the paper's 7
    pgps_patch_size: tuple[int, ...] | None = None
    organ_adaptive_patches = False

    def initialize(self):
        if self.csc_anchors not in CSC_ANCHORS:
            raise ValueError(f"{self.__class__.__name__}.csc_anchors = {self.csc_anchors!r}; choose one of "
                             f"{', '.join(map(repr, CSC_ANCHORS))}")
        super().initialize()
        strides = self.configuration_manager.network_arch_init_kwargs["strides"]
        self.contrast_stage = contrast_stage(strides)
        self.patch_sampler = self._build_patch_sampler()
        self.print_to_log_file(f"AICL: contrast features from encoder stage {self.contrast_stage}, PGPS cuboids "
                               f"{self.patch_sampler.patch_size}"
                               + (f", organ-adaptive {self.patch_sampler.organ_sizes}" if self.organ_adaptive_patches
                                  else ""))

    def _build_patch_sampler(self) -> OrganPatchSampler:
        plans = self.plans_manager.plans
        size = self.pgps_patch_size or pgps_patch_size(plans, self.configuration_name,
                                                       len(self.configuration_manager.patch_size))
        organ_sizes = None
        if self.organ_adaptive_patches:
            planned = planned_pgps(plans, self.configuration_name)
            if not planned:
                raise RuntimeError(f"{self.__class__.__name__}: organ-adaptive PGPS needs planned organ extents "
                                   f"(plans[\"{PLANS_KEY}\"][\"pgps\"]); plan with nnUNetv2_uda_plan_and_preprocess")
            organ_sizes = {self.domain_table.label_names[o]: s for o, s in planned["organ_patch_sizes"].items()}
        return OrganPatchSampler(size, organ_sizes)

    def csc_maps(self, probs: torch.Tensor, hand_labeled: torch.Tensor, domains: torch.Tensor) -> torch.Tensor:
        """The soft predictions l_csc compares, with the anchors ``csc_anchors`` names detached;
        ``hand_labeled``: (B, C) bool, the batch's hand-drawn classes (``batch_annotations``)."""
        if self.csc_anchors == "source":
            return fixed_maps(probs, self.batch_is_source(domains))
        if self.csc_anchors == "labeled":
            return fixed_maps(probs, hand_labeled)
        return probs

    # ------------------------------------------------------------------ schedule (section 3.2)
    @property
    def progress_epochs(self) -> float:
        """t: epochs of training done, fractional within an epoch."""
        return self.counters.values["iterations"] / self.num_iterations_per_epoch

    def loss_weights(self, t: float) -> dict[str, float]:
        r = ramp(t, self.warmup_epochs, self.rampup_epochs)
        return {"sup": self.lambda_sup, "supUL": self.lambda_supUL_max * (1 - r),
                "csc": self.lambda_csc_max * r if self.use_csc else 0.0,
                "fpc": self.lambda_fpc_max * r if self.use_fpc else 0.0}

    # ------------------------------------------------------------------ the loss (eq. 6)
    def training_loss(self, data, target, keys):
        domains = self.batch_domains(keys)
        weights = self.loss_weights(self.progress_epochs)
        output = self.forward(data, domains, return_features=True)
        logits = output.logits if isinstance(output.logits, list) else [output.logits]
        hand_labeled = self.batch_annotations(keys, "ground_truth")
        losses = {"sup": self.supervised_loss(logits, target, hand_labeled),
                  "supUL": self.supervised_loss(logits, target, self.batch_annotations(keys, "pseudo"))}
        if weights["csc"] > 0 or weights["fpc"] > 0:  # past the warm-up
            probs = torch.softmax(logits[0].float(), 1)
        if weights["csc"] > 0:
            shown = contrast_classes(target[0], self.batch_annotations(keys), probs.detach())
            losses["csc"] = structural_consistency_loss(self.csc_maps(probs, hand_labeled, domains), domains, shown,
                                                        self.csc_temperature, self.batch_twin_pairs(len(keys)),
                                                        self.csc_similarity)
        if weights["fpc"] > 0:
            patches = self.patch_sampler(output.encoder[self.contrast_stage], probs)
            losses["fpc"] = patch_contrastive_loss(patches.embeddings, patches.present, self.temperature)
        for name, value in losses.items():
            self.log_scalar(f"l_{name}", value)
        for name, value in weights.items():
            self.log_scalar(f"lambda_{name}", value)
        return sum(weights[name] * value for name, value in losses.items())


class nnUNetTrainerAICL_noFPC(nnUNetTrainerAICL):
    """Ablation (Table 3): without the feature-patch contrastive loss."""
    use_fpc = False


class nnUNetTrainerAICL_noCSC(nnUNetTrainerAICL):
    """Ablation (Table 3): without the contrastive structural consistency loss."""
    use_csc = False


class nnUNetTrainerAICL_noFPC_noCSC(nnUNetTrainerAICL):
    """Ablation (Table 3, first row): focal-Dice supervision (l_sup, l_supUL) only."""
    use_fpc = False
    use_csc = False


class nnUNetTrainerAICL_SourceAnchors(nnUNetTrainerAICL):
    """l_csc holds the source modality's maps fixed instead of the hand-labeled ones (docs/methods/aicl.md)."""
    csc_anchors = "source"


class nnUNetTrainerAICL_ColdStart(nnUNetTrainerAICL):
    """Cold start (Fig. 5 C-F): no warm-up; the contrastive weights ramp up from the first iteration."""
    warmup_epochs = 0.0


class nnUNetTrainerAICL_OrganAdaptive(nnUNetTrainerAICL):
    """PGPS with organ-adaptive cuboid sizes (section 3.4.3's suggested improvement)."""
    organ_adaptive_patches = True


class nnUNetTrainerAICL_SGD_Eq5(nnUNetTrainerAICL):
    """nnU-Net's SGD and poly learning rate, l_csc as eq. 5 prints it (cosine phi, no temperature),
    the source modality's maps held: measured to collapse the target maps (docs/methods/aicl.md)."""
    paper_optimizer = False
    csc_anchors = "source"
    csc_temperature = None
    csc_similarity = "cosine"


class nnUNetTrainerAICL_SGD_InfoNCECSC(nnUNetTrainerAICL_SGD_Eq5):
    """``nnUNetTrainerAICL_SGD_Eq5`` with l_csc in the InfoNCE form, exp(phi / tau), tau = 0.1."""
    csc_temperature = 0.1


class nnUNetTrainerAICL_SGD_DiceCSC(nnUNetTrainerAICL_SGD_InfoNCECSC):
    """``nnUNetTrainerAICL_SGD_InfoNCECSC`` with the soft Dice as phi: the default l_csc under nnU-Net's
    SGD, the source modality's maps held (docs/methods/aicl.md)."""
    csc_similarity = "dice"


class nnUNetTrainerAICL_SGD_noFPC_noCSC(nnUNetTrainerAICL_noFPC_noCSC):
    """The first ablation under nnU-Net's SGD and poly learning rate."""
    paper_optimizer = False
