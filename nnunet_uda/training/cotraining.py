"""nnUNetTrainerCPS: cross pseudo supervision in nnU-Net, the co-training base of DVCL and DACL.

The recipe (DVCL paper section 3.1, eqs. 1-3; CPS: Chen et al., CVPR 2021)::

    L = L_sup + lambda_u(t) L_cps  [+ a method's own terms, ``method_losses``]

- data: one domain, labeled cases and unlabeled ones (domain table ``"labels": "none"``); every batch holds
  B_u unlabeled cases first and B_l labeled ones last, where nnU-Net forces foreground
  (``unlabeled_share`` of the planned batch size, default half), through nnU-Net's loader and augmentation;
  with ``unlabeled_per_labeled`` set, nnU-Net's planned batch stays labeled, its foreground oversampling
  unchanged, and B_u = ``unlabeled_per_labeled`` x B_l unlabeled cases are added to it (per GPU under DDP);
- networks: two of the planned architecture (nnU-Net's own, the ResEnc presets), not sharing parameters,
  initialised by separate draws. Network A is ``self.network``: what ``nnUNetv2_predict`` loads
  (``network_weights``); network B, the projection heads and every method's banks and queues are kept in
  the checkpoint (``uda_state``) and restored by ``--c``;
- L_sup (eq. 1): nnU-Net's Dice + CE of each network on the labeled cases under its deep supervision, the two
  networks' terms summed. Adapted: eq. 1 halves each (Dice + CE) / 2; under nnU-Net's SGD, tuned for its own
  loss scale, that halves the supervised step and cost 0.04 Dice on the phantom (docs/methods/dvcl.md#measured),
  so ``supervised_weight`` is 1 (eq. 1's 1/2: ``nnUNetTrainerCPS_PaperScale``);
- L_cps (eq. 2): CE of each network against the other's detached argmax on the unlabeled cases, at full
  resolution (:func:`~nnunet_uda.losses.cross_pseudo.cross_pseudo_supervision`); with ``cps_on_labeled`` on
  every case of the batch, labeled ones included (DACL);
- lambda_u(t) = ``cps_weight`` x exp(-5 (1 - t / T)^2), t the iterations done, T the whole training (the
  sigmoid ramp-up of UA-MT over the run, as the CPS baseline of DVCL's benchmark ramps it), or ``cps_weight``
  throughout with ``cps_rampup`` off (DACL's lambda_cross = 1);
- one optimiser: nnU-Net's SGD (momentum 0.99, poly learning rate) over both networks and the heads, each
  network's gradient clipped at 12 on its own, as two nnU-Net trainings would be.

With ``projection_dim`` set, each network gets a :class:`~nnunet_uda.nn.projection.ProjectionHead` on its
decoder stage ``feature_stage`` (0: full resolution), fed from the same forward pass, applied to the voxels a
method samples; subclasses receive both networks' :class:`CoTrainingOutputs` in :meth:`method_losses`. DDP:
network B and the heads are wrapped like network A (and compiled like it); every term keeps every parameter in the
graph (a zero weight multiplies, it does not skip).
Measurements and choices: docs/methods/dvcl.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_uda.data.loader import split_batch
from nnunet_uda.losses.cross_pseudo import cross_pseudo_supervision
from nnunet_uda.nn.network import NetworkOutput
from nnunet_uda.nn.projection import ProjectionHead
from nnunet_uda.training.base import nnUNetTrainerUDA
from nnunet_uda.training.schedules import sigmoid_rampup


def labeled_and_unlabeled(table, training_cases) -> tuple[list[str], list[str]]:
    """The training cases with labels (manual or pseudo) and those without (``"labels": "none"``)."""
    unlabeled = [c for c in training_cases if table.entry(c).labels == "none"]
    return [c for c in training_cases if table.entry(c).labels != "none"], unlabeled


class nnUNetTrainerLabeledOnly(nnUNetTrainerUDA):
    """nnU-Net on the labeled cases alone (nnU-Net's own network and loss on annotated voxels): the floor of the
    semi-supervised methods, and their ceiling on a dataset where every case is labeled."""
    use_conditional_norm = False

    def batch_pools(self, training_cases):
        labeled, _ = labeled_and_unlabeled(self.domain_table, training_cases)
        if not labeled:
            raise RuntimeError(f"{self.__class__.__name__}: fold {self.fold} has no labeled training cases")
        return [(labeled, self.batch_size)]


@dataclass
class CoTrainingOutputs:
    """One network's pass over a batch: deep-supervision logits (highest resolution first), the output of its
    decoder stage ``feature_stage`` (what its projection head reads), and the head itself (None without one)."""
    logits: list[torch.Tensor]
    decoder: torch.Tensor
    head: torch.nn.Module | None


class nnUNetTrainerCPS(nnUNetTrainerUDA):
    """Cross pseudo supervision: L_sup + lambda_u(t) L_cps (module docstring); the baseline of DVCL and DACL."""
    use_conditional_norm = False
    #: share of every batch drawn from unlabeled cases (B_u / B)
    unlabeled_share = 0.5
    #: None: the planned batch is split by ``unlabeled_share``; r: the planned batch stays labeled (B_l) and
    #: round(r x B_l) unlabeled cases are added to it
    unlabeled_per_labeled: float | None = None
    #: lambda_u's maximum (DVCL eq. 3: 0.1), reached by the ramp-up, or held throughout without it
    cps_weight = 0.1
    cps_rampup = True
    #: L_cps on the unlabeled cases alone (DVCL eq. 2), or on every case of the batch (DACL)
    cps_on_labeled = False
    #: each network's weight on nnU-Net's Dice + CE (nnU-Net's own training: 1; eq. 1: 1/2)
    supervised_weight = 1.0
    #: output size of the projection heads; None: no heads (CPS)
    projection_dim: int | None = None
    #: decoder stage the heads read (0: the highest resolution)
    feature_stage = 0

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.n_unlabeled = 0  # unlabeled samples at the start of every batch (_set_batch_size_and_oversample)
        self.planned_oversample = self.oversample_foreground_percent  # of the planned batch, before any change

    # ------------------------------------------------------------------ networks
    def configure_optimizers(self):
        """Network B and the heads are built here, between nnU-Net's network A and its optimiser, and join
        nnU-Net's optimiser as a parameter group of their own (the poly schedule sets every group)."""
        optimizer, scheduler = super().configure_optimizers()
        self.network_b = self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, self.enable_deep_supervision).to(self.device)
        self.register_state("network_b", self.network_b)
        self.heads = []
        if self.projection_dim is not None:
            channels = self.configuration_manager.network_arch_init_kwargs["features_per_stage"][self.feature_stage]
            self.heads = [ProjectionHead(channels, self.projection_dim).to(self.device) for _ in range(2)]
            self.register_state("head_a", self.heads[0])
            self.register_state("head_b", self.heads[1])
        optimizer.add_param_group({"params": [p for m in self.partner_modules() for p in m.parameters()]})
        return optimizer, scheduler

    def partner_modules(self) -> list[torch.nn.Module]:
        """Every trained module besides network A: network B and the heads."""
        return [self.network_b, *self.heads]

    def initialize(self):
        """Network B is compiled where nnU-Net compiles network A (CUDA, ``nnUNet_compile``) and wrapped in DDP
        like it; the checkpoint keeps the bare modules registered in :meth:`configure_optimizers`."""
        super().initialize()
        if self._do_i_compile():
            self.network_b = torch.compile(self.network_b)
        if self.is_ddp:
            self.wrap_partners_in_ddp()

    def wrap_partners_in_ddp(self) -> None:
        """Network B and the heads in DDP, as nnU-Net wraps network A."""
        devices = [self.local_rank] if self.device.type == "cuda" else None
        self.network_b = DDP(self.network_b, device_ids=devices)
        self.heads = [DDP(h, device_ids=devices) for h in self.heads]

    def clipping_groups(self):
        head_a, head_b = (list(h.parameters()) for h in self.heads) if self.heads else ([], [])
        return [list(self.network.parameters()) + head_a, list(self.network_b.parameters()) + head_b]

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        for module in self.partner_modules():
            module.train()

    def run_pair(self, data: torch.Tensor) -> tuple[CoTrainingOutputs, CoTrainingOutputs]:
        """Both networks on the batch, features and projections from the same pass."""
        return tuple(self._run(network, head, data) for network, head in
                     zip((self.network, self.network_b), self.heads or (None, None)))

    def _run(self, network, head, data) -> CoTrainingOutputs:
        output: NetworkOutput = network(data, return_features=True)
        logits = output.logits if isinstance(output.logits, list) else [output.logits]
        return CoTrainingOutputs(logits, output.decoder[self.feature_stage], head)

    # ------------------------------------------------------------------ batches
    def _set_batch_size_and_oversample(self):
        """nnU-Net's batch size and oversampling (per GPU under DDP), and the batch's ``n_unlabeled`` leading
        unlabeled samples: ``unlabeled_share`` of it, or, with ``unlabeled_per_labeled``, nnU-Net's batch becomes
        the labeled tail of a larger one, its foreground-forced samples kept in number. Repeatable: each call
        starts from the planned batch and oversampling."""
        self.oversample_foreground_percent = self.planned_oversample
        super()._set_batch_size_and_oversample()
        if self.unlabeled_per_labeled is None:
            self.n_unlabeled, _ = split_batch(self.batch_size, self.unlabeled_share, ("unlabeled", "labeled"))
            return
        labeled = self.batch_size
        forced = labeled - round(labeled * (1 - self.oversample_foreground_percent))  # nnU-Net's loader rule
        self.n_unlabeled = max(1, round(self.unlabeled_per_labeled * labeled))
        self.batch_size = labeled + self.n_unlabeled
        self.oversample_foreground_percent = forced / self.batch_size

    def batch_pools(self, training_cases):
        """Unlabeled cases first, labeled ones last (where nnU-Net forces foreground)."""
        labeled, unlabeled = labeled_and_unlabeled(self.domain_table, training_cases)
        if not unlabeled or not labeled:
            missing = "unlabeled (\"labels\": \"none\")" if not unlabeled else "labeled"
            raise RuntimeError(f"{self.__class__.__name__} needs labeled and unlabeled training cases, but fold "
                               f"{self.fold} has no {missing} ones; see docs/datasets.md#semi-supervised-datasets")
        return [(unlabeled, self.n_unlabeled), (labeled, self.batch_size - self.n_unlabeled)]

    # ------------------------------------------------------------------ the loss (eq. 3)
    @property
    def progress(self) -> float:
        """t / T: the share of the training's iterations done."""
        return self.counters.values["iterations"] / (self.num_epochs * self.num_iterations_per_epoch)

    def training_loss(self, data, target, keys):
        terms = self.loss_terms(data, target, keys)
        for name, (weight, value) in terms.items():
            self.log_scalar(f"l_{name}", value)
            self.log_scalar(f"lambda_{name}", weight)
        return sum(weight * value for weight, value in terms.values())

    def loss_terms(self, data, target, keys) -> dict[str, tuple[float, torch.Tensor]]:
        """Eq. 3's terms on one batch, name -> (weight at this iteration, value): L_sup, L_cps, a method's own."""
        a, b = self.run_pair(data)
        u = self.n_unlabeled
        labeled = [t[u:] for t in target]
        annotated = self.batch_annotations(keys[u:])
        ramp = sigmoid_rampup(self.progress, 1.0) if self.cps_rampup else 1.0
        crossed = slice(None) if self.cps_on_labeled else slice(u)
        cps = cross_pseudo_supervision(a.logits[0][crossed], b.logits[0][crossed])
        terms = {"sup": (self.supervised_weight, self.supervised_loss([x[u:] for x in a.logits], labeled, annotated)
                         + self.supervised_loss([x[u:] for x in b.logits], labeled, annotated)),
                 "cps": (self.cps_weight * ramp, cps)}
        return {**terms, **self.method_losses(a, b, labeled[0], u)}

    def method_losses(self, a: CoTrainingOutputs, b: CoTrainingOutputs, labels: torch.Tensor,
                      n_unlabeled: int) -> dict[str, tuple[float, torch.Tensor]]:
        """A method's own terms, name -> (weight, value), from both networks' outputs; ``labels`` (B_l, 1, *s)
        the labeled cases' full-resolution label maps; samples ``[:n_unlabeled]`` are the unlabeled ones."""
        return {}


class nnUNetTrainerCPS_noCPS(nnUNetTrainerCPS):
    """The co-training batch without cross supervision (lambda_u = 0): both networks supervised on the labeled half
    of each batch only. Against ``nnUNetTrainerLabeledOnly`` it measures what splitting the batch costs, against
    ``nnUNetTrainerCPS`` what L_cps brings (docs/methods/dvcl.md#measured)."""
    cps_weight = 0.0


class nnUNetTrainerCPS_PaperScale(nnUNetTrainerCPS):
    """CPS with eq. 1's (Dice + CE) / 2 per network: under nnU-Net's SGD half the supervised step of
    ``nnUNetTrainerLabeledOnly`` (docs/methods/dvcl.md#measured)."""
    supervised_weight = 0.5


class nnUNetTrainerCPS_PlusUnlabeled(nnUNetTrainerCPS):
    """CPS on nnU-Net's planned batch of labeled cases plus as many unlabeled ones: each network sees the labeled
    cases as often as ``nnUNetTrainerLabeledOnly`` does, at twice its batch (docs/methods/dvcl.md#measured)."""
    unlabeled_per_labeled = 1.0
