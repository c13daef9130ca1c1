"""nnUNetTrainerSourceOnly: the no-adaptation floor."""
from __future__ import annotations

from nnunet_uda.training.base import nnUNetTrainerUDA


class nnUNetTrainerSourceOnly(nnUNetTrainerUDA):
    """nnU-Net trained on the labeled source-domain cases only, applied unchanged to the target.

    The network is nnU-Net's own (no conditional norm: target-domain norm parameters would never
    be trained); every batch holds source cases only. This is the floor that adaptation methods
    are measured against.
    """
    target_share = 0.0
    use_conditional_norm = False

    def batch_pools(self, training_cases):
        training = set(training_cases)
        source = [c for c in self.domain_table.cases_of(self.domain_table.source) if c in training]
        if not source:
            raise RuntimeError("nnUNetTrainerSourceOnly: the training split has no source-domain cases; the domain "
                               "table's non-target domains are the source")
        return [(source, self.batch_size)]
