"""nnUNetTrainerSelfTraining: a self-training round of the FLARE 2024 Task 3 pipeline.

Section 2.3 and 3.2 of the paper: once the pseudo labels of the most consistent target cases are
selected (``nnUNetv2_uda_pseudolabel``), nnU-Net is trained again, fully supervised, on the source
cases and those pseudo-labeled cases together. This trainer is that training: nnU-Net's own network
(no conditional norms: the paper trains an unmodified nnU-Net ResEnc) and nnU-Net's sampling, every
batch drawn from all labeled training cases alike; a ``"pseudo"`` case's label file counts as its
labels. It differs from ``nnUNetTrainer`` only in reading the domain table (masked losses for
partially labeled cases) and the plugin's brief-run variables (:mod:`nnunet_uda.training.brief`),
so the pipeline example can run rounds in minutes; a full-length round may as well use
``-tr nnUNetTrainer`` on the round's dataset.
"""
from __future__ import annotations

from nnunet_uda.training.base import nnUNetTrainerUDA


class nnUNetTrainerSelfTraining(nnUNetTrainerUDA):
    use_conditional_norm = False

    def batch_pools(self, training_cases):
        labeled = [c for c in training_cases if self.domain_table.entry(c).labels != "none"]
        if not labeled:
            raise RuntimeError(f"{self.__class__.__name__}: the training split has no labeled cases (hand-drawn or "
                               f"pseudo labels in the domain table)")
        return [(labeled, self.batch_size)]
