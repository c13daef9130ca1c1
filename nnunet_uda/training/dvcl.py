"""nnUNetTrainerDVCL: distance-aware voxel-wise contrastive learning (Zhao et al., ICCV 2025).

The recipe (eq. 3), on the co-training base (:mod:`nnunet_uda.training.cotraining`)::

    L = L_sup + lambda_u(t) L_cps + lambda_c (L_hqcl + beta L_dvcl),  lambda_u 0.1 ramped, lambda_c 0.1, beta 0.3

- ESM (eqs. 4-6): per network and iteration, the unlabeled voxels' entropy split at mean + alpha std
  (alpha 0.5) into reliable and unreliable (:mod:`nnunet_uda.losses.entropy_selection`);
- L_hqcl (eqs. 7-10): anchors from labeled voxels predicted correctly and reliable unlabeled voxels, the
  positive the centre of a class-wise memory bank, the negatives labeled voxels misclassified as the class,
  M = 256 anchors, N = 50 negatives, sigma 1 (:class:`~nnunet_uda.losses.hqcl.HighQualityContrast`);
- L_dvcl (eqs. 11-19): queries among the unreliable voxels of both networks, K nearest and K' farthest
  candidates of a FIFO queue, NPS (eqs. 13-14) and QDS (eq. 15), eq. 18's bound on the prediction vectors
  (:class:`~nnunet_uda.losses.dvcl.DistanceAwareContrast`; K, K', U, queue size chosen there).

Features come from a projection head (linear - ReLU - linear to ``projection_dim``) on each network's
full-resolution decoder stage, applied only to the voxels the losses sample: per network and step at most
``voxels_per_class`` labeled voxels per class, as many misclassified ones per predicted class, as many
reliable unlabeled ones per pseudo-label, and ``unreliable_voxels`` unreliable ones, so the contrastive cost
does not grow with the patch. The bank and queue are in the checkpoint. Variants are Table 2's rows, each also on
nnU-Net's planned labeled batch plus as many unlabeled cases (``_PlusUnlabeled``).
Measurements and choices: docs/methods/dvcl.md.
"""
from __future__ import annotations

import torch

from nnunet_uda.losses.dvcl import DistanceAwareContrast
from nnunet_uda.losses.entropy_selection import entropy_split
from nnunet_uda.losses.hqcl import HighQualityContrast
from nnunet_uda.losses.sampling import sample_per_class
from nnunet_uda.training.cotraining import CoTrainingOutputs, nnUNetTrainerCPS


class nnUNetTrainerDVCL(nnUNetTrainerCPS):
    projection_dim = 64
    #: eq. 3's weights
    lambda_c = 0.1
    beta = 0.3
    #: ESM's alpha (eq. 6)
    alpha = 0.5
    use_hqcl = True
    use_dvcl = True
    #: neighbour partitioning (eqs. 13-14) and query detection (eq. 15)
    nps = True
    qds = True
    #: voxels fed to the head per network and step (module docstring)
    voxels_per_class = 512
    unreliable_voxels = 2048

    def initialize(self):
        if self.feature_stage != 0:
            raise ValueError(f"{self.__class__.__name__} contrasts full-resolution voxels: feature_stage must be 0")
        super().initialize()
        classes = self.label_manager.num_segmentation_heads
        self.hqcl = HighQualityContrast(classes, self.projection_dim)
        self.dvcl = DistanceAwareContrast(classes, self.projection_dim, nps=self.nps, qds=self.qds)
        self.register_state("hqcl_bank", self.hqcl)
        self.register_state("dvcl_queue", self.dvcl)

    def method_losses(self, a: CoTrainingOutputs, b: CoTrainingOutputs, labels: torch.Tensor, n_unlabeled: int):
        anchors, unreliable = zip(*(self.sample_voxels(x, labels, n_unlabeled) for x in (a, b)))
        losses = {}
        if self.use_hqcl:
            losses["hqcl"] = (self.lambda_c, self.hqcl(*(torch.cat(parts) for parts in zip(*anchors))))
        if self.use_dvcl:
            features, probs = (torch.cat(parts) for parts in zip(*unreliable))
            losses["dvcl"] = (self.lambda_c * self.beta, self.dvcl(features, probs))
        return losses

    def sample_voxels(self, x: CoTrainingOutputs, labels: torch.Tensor, n_unlabeled: int):
        """One network's bounded voxel sets: (features, labels, predicted, labeled, reliable) for L_hqcl, and
        (features, probs) of unreliable unlabeled voxels for L_dvcl. Samples ``[:n_unlabeled]`` are unlabeled,
        the rest labeled with ``labels`` (B_l, 1, *s)."""
        probs = torch.softmax(x.logits[0].float(), 1)
        u, c = n_unlabeled, probs.shape[1]
        with torch.no_grad():
            predicted = probs.argmax(1)
            _, reliable_u, unreliable_u = entropy_split(probs[:u], self.alpha)  # eqs. 4-6
            truth = labels[:, 0].long()
            truth = torch.where((truth >= 0) & (truth < c), truth, c)  # ignore and padding: no class
            none = torch.full_like(predicted[:u], c)
            label = torch.cat((predicted[:u], truth))  # pseudo label, or ground truth
            reliable = torch.cat((reliable_u, torch.zeros_like(truth, dtype=torch.bool)))
            labeled = torch.zeros_like(label, dtype=torch.bool)
            labeled[u:] = True
            groups = (torch.cat((none, truth)),  # labeled voxels by class (eq. 7's anchors among them)
                      torch.where(labeled & (predicted != label) & (label < c), predicted, c),  # eq. 9's negatives
                      torch.where(reliable, label, c))  # reliable unlabeled voxels by pseudo label
            index = torch.cat([self._pick(g.flatten(), c) for g in groups])
            candidates = unreliable_u.flatten().nonzero()[:, 0]  # the unlabeled samples come first in the batch
            chosen = candidates[torch.randperm(len(candidates), device=candidates.device)[:self.unreliable_voxels]]
        decoder = x.decoder.movedim(1, -1).flatten(0, -2)
        hqcl_voxels = (x.head(decoder[index]), label.flatten()[index], predicted.flatten()[index],
                       labeled.flatten()[index], reliable.flatten()[index])
        with torch.no_grad():  # L_dvcl's features only choose neighbours and outsiders (eq. 12)
            unreliable_features = x.head(decoder[chosen])
        return hqcl_voxels, (unreliable_features, probs.movedim(1, -1).flatten(0, -2)[chosen])

    def _pick(self, classes: torch.Tensor, c: int) -> torch.Tensor:
        """Indices of up to ``voxels_per_class`` random voxels of each class of ``classes`` (c: none)."""
        index, valid = sample_per_class(classes, c, self.voxels_per_class)
        return index[valid]


class nnUNetTrainerDVCL_HqCL(nnUNetTrainerDVCL):
    """Table 2, second row: CPS + HqCL."""
    use_dvcl = False


class nnUNetTrainerDVCL_noNPS_noQDS(nnUNetTrainerDVCL):
    """Table 2, third row: CPS + HqCL + DVCL, without NPS and QDS."""
    nps = False
    qds = False


class nnUNetTrainerDVCL_noQDS(nnUNetTrainerDVCL):
    """Table 2, fourth row: CPS + HqCL + DVCL + NPS, without QDS."""
    qds = False


class nnUNetTrainerDVCL_PlusUnlabeled(nnUNetTrainerDVCL):
    """The full trainer on nnU-Net's planned batch of labeled cases plus as many unlabeled ones (the co-training
    base's ``unlabeled_per_labeled``; docs/methods/dvcl.md#measured)."""
    unlabeled_per_labeled = 1.0


class nnUNetTrainerDVCL_HqCL_PlusUnlabeled(nnUNetTrainerDVCL_HqCL):
    """Table 2, second row, on the batch of ``nnUNetTrainerDVCL_PlusUnlabeled``."""
    unlabeled_per_labeled = 1.0


class nnUNetTrainerDVCL_noNPS_noQDS_PlusUnlabeled(nnUNetTrainerDVCL_noNPS_noQDS):
    """Table 2, third row, on the batch of ``nnUNetTrainerDVCL_PlusUnlabeled``."""
    unlabeled_per_labeled = 1.0


class nnUNetTrainerDVCL_noQDS_PlusUnlabeled(nnUNetTrainerDVCL_noQDS):
    """Table 2, fourth row, on the batch of ``nnUNetTrainerDVCL_PlusUnlabeled``."""
    unlabeled_per_labeled = 1.0
