"""nnUNetTrainerDACL: density-aware contrastive co-training (Tang et al., AAAI 2025).

The recipe (eq. 1), on the co-training base (:mod:`nnunet_uda.training.cotraining`)::

    L = L_sup + lambda_cross L_cross + lambda_CL(t) L_CL^soft

- L_cross: the base's cross pseudo supervision on every case of the batch, labeled ones included ("all samples
  are utilized to construct cross-supervised learning"), lambda_cross = 1 throughout (no ramp-up);
- lambda_CL(t) = 0.1 exp(-5 (1 - t / t_max)^2), held at 0 for the first 1,000 iterations (of the paper's
  30,000: a run shorter than 30,000 iterations waits the same share, 1/30 of it);
- features (eq. 2): a projection head (linear - ReLU - linear to ``projection_dim``) on each network's
  full-resolution decoder stage; a voxel belongs to class n where it is labeled n, or, unlabeled, where the
  network's own probability of n exceeds phi (T_n = 1(M_n > phi)). ``feature_level`` "voxel" (default) takes
  voxels as the features (N_q = 256 anchors per class imply voxels), "region" the masked average pool of
  eq. 2, one vector per class and image. At most ``voxels_per_class`` voxels per class and network are fed to
  the head, so the cost does not grow with the patch;
- L_CL^soft (eqs. 3-10): :class:`~nnunet_uda.losses.dacl.DensityAwareContrast` over both networks' features,
  one class memory bank (L = 1,000) in the checkpoint.

nnU-Net's SGD (momentum 0.99, weight decay 3e-5), chosen by measurement over the paper's (0.9, 1e-4), which
``nnUNetTrainerDACL_PaperSGD`` keeps.
Variants: Table 2's rows I-VI (each also on nnU-Net's planned labeled batch plus as many unlabeled cases,
``_PlusUnlabeled``), the forms the text leaves open, and two that isolate measured losses (``_LabeledContrast``,
``_RampedCross``). Measurements and choices: docs/methods/dacl.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nnunet_uda.losses.dacl import DensityAwareContrast
from nnunet_uda.losses.sampling import sample_per_class
from nnunet_uda.training.cotraining import CoTrainingOutputs, nnUNetTrainerCPS
from nnunet_uda.training.schedules import sigmoid_rampup


class nnUNetTrainerDACL(nnUNetTrainerCPS):
    cps_weight = 1.0
    cps_rampup = False
    cps_on_labeled = True
    projection_dim = 64
    #: lambda_CL's maximum, and the iterations it is held at 0 (at most ``warmup_share`` of the run)
    contrast_weight = 0.1
    warmup_iterations = 1000
    warmup_share = 1000 / 30000
    #: eq. 2's phi: an unlabeled voxel belongs to the class whose probability exceeds it
    reliability = 0.8
    feature_level = "voxel"
    #: voxels fed to the head per class, network and step
    voxels_per_class = 512
    #: L_CL^soft's settings (section "Soft Density-Guided Contrastive Learning"; Table 2's switches)
    bank_size = 1000
    anchors_per_class = 256
    positive_keys = 512
    negative_keys = 512
    temperature = 0.4
    density_scales = (8, 16, 32)
    sampling = "density"
    use_bank = True
    use_positiveness = True
    loss_form = "supcon"

    def initialize(self):
        if self.feature_stage != 0 or self.feature_level not in ("voxel", "region"):
            raise ValueError(f"{self.__class__.__name__} contrasts full-resolution features: feature_stage must be 0 "
                             f"and feature_level 'voxel' or 'region', got {self.feature_stage}, {self.feature_level!r}")
        super().initialize()
        if self.projection_dim is not None:
            self.contrast = DensityAwareContrast(
                self.label_manager.num_segmentation_heads, self.projection_dim, self.bank_size,
                2 * self.voxels_per_class, self.anchors_per_class, self.positive_keys, self.negative_keys,
                self.temperature, self.density_scales, self.sampling, self.use_bank, self.use_positiveness,
                self.loss_form)
            self.register_state("dacl_bank", self.contrast)

    def contrast_lambda(self) -> float:
        """lambda_CL(t) of eq. 1: 0 during the warm-up, then the Gaussian ramp over the whole run."""
        total = self.num_epochs * self.num_iterations_per_epoch
        if self.counters.values["iterations"] < min(self.warmup_iterations, self.warmup_share * total):
            return 0.0
        return self.contrast_weight * sigmoid_rampup(self.progress, 1.0)

    def method_losses(self, a: CoTrainingOutputs, b: CoTrainingOutputs, labels: torch.Tensor, n_unlabeled: int):
        if self.projection_dim is None:
            return {}
        features, classes = zip(*(self.class_features(x, labels, n_unlabeled) for x in (a, b)))
        return {"dacl": (self.contrast_lambda(), self.contrast(torch.cat(features), torch.cat(classes)))}

    def class_features(self, x: CoTrainingOutputs, labels: torch.Tensor, n_unlabeled: int):
        """One network's projected features (N, D) and their classes (N,): samples ``[:n_unlabeled]`` unlabeled
        (class where the network's probability exceeds phi), the rest labeled with ``labels`` (B_l, 1, *s)."""
        c = x.logits[0].shape[1]
        with torch.no_grad():
            confidence, predicted = torch.softmax(x.logits[0][:n_unlabeled].float(), 1).max(1)
            truth = labels[:, 0].long()
            truth = torch.where((truth >= 0) & (truth < c), truth, c)  # ignore and padding: no class
            classes = torch.cat((torch.where(confidence > self.reliability, predicted, c), truth))
        if self.feature_level == "region":
            return masked_average_pool(x.head(x.decoder), classes, c)
        with torch.no_grad():
            index, valid = sample_per_class(classes.flatten(), c, self.voxels_per_class)
            index = index[valid]
        return x.head(x.decoder.movedim(1, -1).flatten(0, -2)[index]), classes.flatten()[index]


def masked_average_pool(projected: torch.Tensor, classes: torch.Tensor, num_classes: int):
    """Eq. 2: per image and class present, the mean of the projected features ``projected`` (B, D, *s) over the
    voxels of that class in ``classes`` (B, *s) (values >= ``num_classes``: none). Returns (N, D) vectors and
    their (N,) classes. The printed denominator sums T over all classes; T_n, the class's own mask, makes it the
    masked average the text names."""
    masks = F.one_hot(classes, num_classes + 1)[..., :num_classes].movedim(-1, 1).to(projected.dtype)  # (B, C, *s)
    sums = torch.einsum("bc...,bd...->bcd", masks, projected)
    counts = masks.flatten(2).sum(-1)  # (B, C)
    present = counts > 0
    vectors = sums / counts.clamp_min(1)[..., None]
    return vectors[present], torch.arange(num_classes, device=classes.device).expand_as(present)[present]


class nnUNetTrainerDACL_CPS(nnUNetTrainerDACL):
    """Table 2, row I: the co-training baseline (lambda_cross = 1), no contrast."""
    projection_dim = None


class nnUNetTrainerDACL_PCL(nnUNetTrainerDACL):
    """Table 2, row II: plain contrast, anchors and positive keys drawn at random."""
    sampling = "random"
    use_bank = False
    use_positiveness = False


class nnUNetTrainerDACL_DA(nnUNetTrainerDACL):
    """Table 2, row III: density-aware anchors and keys, one scale (k = 8), within the batch."""
    density_scales = (8,)
    use_bank = False
    use_positiveness = False


class nnUNetTrainerDACL_MS(nnUNetTrainerDACL):
    """Table 2, row IV: multi-scale density (k = 8, 16, 32), within the batch."""
    use_bank = False
    use_positiveness = False


class nnUNetTrainerDACL_Bank(nnUNetTrainerDACL):
    """Table 2, row V: density within bank and batch, half the positive keys from the bank; no w_i."""
    use_positiveness = False


class nnUNetTrainerDACL_PrintedLoss(nnUNetTrainerDACL):
    """The full trainer with eq. 10 as printed: no positive in the denominator, w_i inside the log."""
    loss_form = "printed"


class nnUNetTrainerDACL_Region(nnUNetTrainerDACL):
    """The full trainer on eq. 2's pooled vectors (one per class and image) instead of voxels."""
    feature_level = "region"


class nnUNetTrainerDACL_PaperSGD(nnUNetTrainerDACL):
    """The full trainer with the paper's SGD: momentum 0.9, weight decay 1e-4 (nnU-Net's: 0.99, 3e-5), nnU-Net's
    initial learning rate 0.01 and poly schedule kept."""

    def configure_optimizers(self):
        optimizer, scheduler = super().configure_optimizers()
        for group in optimizer.param_groups:
            group.update(momentum=0.9, weight_decay=1e-4)
        return optimizer, scheduler


class nnUNetTrainerDACL_LabeledContrast(nnUNetTrainerDACL):
    """The full trainer with the contrast fed labeled voxels only (no probability exceeds phi = 1): against
    ``nnUNetTrainerDACL``, what the confidence-selected unlabeled voxels bring or cost
    (docs/methods/dacl.md#measured)."""
    reliability = 1.0


class nnUNetTrainerDACL_RampedCross(nnUNetTrainerDACL):
    """The full trainer with lambda_cross ramped to 1 over the run (the base's Gaussian ramp, as CPS ramps lambda_u)
    instead of 1 from the first iteration (docs/methods/dacl.md#measured)."""
    cps_rampup = True


class nnUNetTrainerDACL_PlusUnlabeled(nnUNetTrainerDACL):
    """The full trainer on nnU-Net's planned batch of labeled cases plus as many unlabeled ones (the co-training
    base's ``unlabeled_per_labeled``; docs/methods/dacl.md#measured)."""
    unlabeled_per_labeled = 1.0


class nnUNetTrainerDACL_CPS_PlusUnlabeled(nnUNetTrainerDACL_CPS):
    """Table 2, row I, on the batch of ``nnUNetTrainerDACL_PlusUnlabeled``."""
    unlabeled_per_labeled = 1.0


class nnUNetTrainerDACL_PCL_PlusUnlabeled(nnUNetTrainerDACL_PCL):
    """Table 2, row II, on the batch of ``nnUNetTrainerDACL_PlusUnlabeled``."""
    unlabeled_per_labeled = 1.0


class nnUNetTrainerDACL_DA_PlusUnlabeled(nnUNetTrainerDACL_DA):
    """Table 2, row III, on the batch of ``nnUNetTrainerDACL_PlusUnlabeled``."""
    unlabeled_per_labeled = 1.0


class nnUNetTrainerDACL_MS_PlusUnlabeled(nnUNetTrainerDACL_MS):
    """Table 2, row IV, on the batch of ``nnUNetTrainerDACL_PlusUnlabeled``."""
    unlabeled_per_labeled = 1.0


class nnUNetTrainerDACL_Bank_PlusUnlabeled(nnUNetTrainerDACL_Bank):
    """Table 2, row V, on the batch of ``nnUNetTrainerDACL_PlusUnlabeled``."""
    unlabeled_per_labeled = 1.0
