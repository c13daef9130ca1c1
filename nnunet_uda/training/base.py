"""nnUNetTrainerUDA: the base of every nnunet_uda trainer.

What it adds to nnU-Net's trainer, and nothing more:

- batches that mix domains: a ``target_share`` of every batch comes from target-domain training
  cases, the rest from source-domain cases (placed last, where nnU-Net forces foreground); or,
  with ``twin_batches``, modality pairs of one subject (the domain table's ``subject``), each
  target case with its source twin, cropped and augmented together
  (:class:`~nnunet_uda.data.loader.TwinBatchDataLoader`);
- a domain-conditioned network (nnU-Net's U-Net with conditional instance norm in the encoder,
  :class:`~nnunet_uda.nn.network.DomainConditionedUNet`); each sample is normalised with its
  own domain's parameters; without conditional norms nnU-Net's network as it is
  (:class:`~nnunet_uda.nn.network.FeatureUNet`); either gives features from its forward pass;
- a supervised loss on annotated voxels and annotated classes only
  (:class:`~nnunet_uda.losses.partial_labels.PartialLabelLoss`);
- per-epoch scalars of subclasses (``log_scalar``) in the training log, nnU-Net's logger and
  ``progress.png``;
- extra state (networks, optimizers, buffers, counters registered with ``register_state``)
  saved in nnU-Net's checkpoint and restored by ``--c``;
- a brief mode for tests, demos and benchmarks (see :mod:`nnunet_uda.training.brief`).

Subclasses override :meth:`training_loss` (and register their extra state); the rest of nnU-Net's
training loop stays as it is.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from collections import defaultdict
from contextlib import contextmanager

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.configuration import default_num_processes
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast
from torch._dynamo import OptimizedModule

from nnunet_uda.data.loader import MixedBatchDataLoader, TwinBatchDataLoader, split_batch
from nnunet_uda.distributed import average_gradients
from nnunet_uda.domains import DomainTable
from nnunet_uda.losses.partial_labels import PartialLabelLoss
from nnunet_uda.losses.structural_consistency import twin_pairs
from nnunet_uda.nn.network import INFERENCE_DOMAIN_ENV, DomainConditionedUNet, FeatureUNet
from nnunet_uda.planning import PLANS_KEY
from nnunet_uda.training.brief import apply_brief_settings
from nnunet_uda.training.progress import ExtendedLocalLogger


class Counters:
    """Plain integer counters kept in the checkpoint (e.g. iterations done)."""

    def __init__(self, **values: int):
        self.values = dict(values)

    def state_dict(self) -> dict:
        return dict(self.values)

    def load_state_dict(self, state: dict) -> None:
        self.values.update(state)


class nnUNetTrainerUDA(nnUNetTrainer):
    #: share of every training batch drawn from target-domain cases (rounded to whole samples)
    target_share: float = 0.5
    #: condition the encoder's instance norms on the domain (AICL eq. 1)
    use_conditional_norm: bool = True
    #: focal exponent of the supervised loss (0: cross-entropy, as nnU-Net)
    focal_gamma: float = 0.0
    #: mirror each training batch as a whole (one draw per batch) instead of per sample, for losses
    #: that compare the spatial maps of different samples (:class:`MixedBatchDataLoader`)
    batch_mirroring: bool = False
    #: batches of modality pairs (target case and its source twin): True requires them, None uses
    #: them where the domain table pairs target and source cases, False never
    twin_batches: bool | None = False
    #: the AICL paper's optimiser (section 3.2: Adam, lr 1e-4 held constant, weight decay 1e-5)
    #: instead of nnU-Net's SGD with momentum 0.99 and the poly schedule from 1e-2
    paper_optimizer: bool = False
    #: the training loader yields un-augmented patches at nnU-Net's initial patch size, with every case cropped
    #: alike (``uniform_crops``); the trainer applies ``self.training_transforms`` (nnU-Net's augmentation) itself
    augment_in_train_step: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.domain_table = DomainTable.from_dataset_json(dataset_json)
        # per-case lookups for every batch: domain index and annotated output channels
        table = self.domain_table
        cases = list(table.cases) + list(table.test_cases)
        self._case_domain = {c: table.domain_index(table.domain_of(c)) for c in cases}
        self._case_annotated = {source: {c: self._annotation_row(labels(c)) for c in cases} for source, labels in (
            ("any", table.annotated_labels), ("ground_truth", table.ground_truth_labels),
            ("pseudo", table.pseudo_labeled))}
        self.logger.local_logger = ExtendedLocalLogger(self.logger.local_logger.verbose)
        self._epoch_scalars: dict[str, list[float]] = defaultdict(list)
        self.extra_state: dict[str, object] = {}
        self.counters = Counters(iterations=0)
        self.n_twin_pairs = 0  # modality pairs per training batch (get_dataloaders)
        self.register_state("counters", self.counters)
        apply_brief_settings(self)

    # ------------------------------------------------------------------ extension points
    def register_state(self, name: str, obj) -> None:
        """Keep ``obj`` (anything with ``state_dict``/``load_state_dict``) in the checkpoint."""
        self.extra_state[name] = obj

    def log_scalar(self, name: str, value) -> None:
        """Record a scalar in this epoch; its epoch mean goes to the log and progress.png."""
        self._epoch_scalars[name].append(float(value.detach()) if torch.is_tensor(value) else float(value))

    def training_loss(self, data: torch.Tensor, target: list[torch.Tensor], keys) -> torch.Tensor:
        """The loss of one training batch (case ids ``keys``); the base trainer's is the supervised
        loss on every labeled class, manual or pseudo."""
        return self.supervised_loss(self.forward(data, self.batch_domains(keys)), target, self.batch_annotations(keys))

    # ------------------------------------------------------------------ network
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision=True):
        unet = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                         num_output_channels, enable_deep_supervision)
        if not cls.use_conditional_norm:
            return FeatureUNet(unet)
        block = plans_manager.plans.get(PLANS_KEY)
        if block is None:
            raise RuntimeError(f"the plans of {plans_manager.dataset_name} carry no domain information "
                               f"(plans[\"{PLANS_KEY}\"]); plan the dataset with nnUNetv2_uda_plan_and_preprocess")
        return DomainConditionedUNet(unet, block["domains"], block["inference_domain"])

    @property
    def bare_network(self) -> torch.nn.Module:
        """The network without DDP and torch.compile wrappers."""
        net = self.network.module if self.is_ddp else self.network
        return net._orig_mod if isinstance(net, OptimizedModule) else net

    def forward(self, data: torch.Tensor, domains: torch.Tensor, return_features: bool = False):
        """Segment a batch, each sample with its own domain where the norms are conditional (features on request)."""
        return self.network(data, domains, return_features=return_features)

    # ------------------------------------------------------------------ batches
    def _annotation_row(self, names) -> np.ndarray:
        row = np.zeros(self.label_manager.num_segmentation_heads, dtype=bool)
        row[[0, *self.domain_table.classes_of(names)]] = True
        return row

    def batch_domains(self, keys) -> torch.Tensor:
        """(B,) domain index of each case of a batch."""
        return torch.tensor([self._case_domain[k] for k in keys], device=self.device)

    def batch_is_source(self, domains: torch.Tensor) -> torch.Tensor:
        """(B,) bool: which samples (domain indices ``domains``) are of a source domain."""
        source = [self.domain_table.domain_index(d) for d in self.domain_table.source]
        return torch.isin(domains, torch.tensor(source, device=domains.device))

    def batch_annotations(self, keys, source: str = "any") -> torch.Tensor:
        """(B, C) bool: which output channels are labeled in each case (background always), by
        ``source``: ``any``, ``ground_truth`` (drawn by hand) or ``pseudo``."""
        rows = self._case_annotated[source]
        return torch.from_numpy(np.stack([rows[k] for k in keys])).to(self.device)

    def batch_pools(self, training_cases) -> list[tuple[list[str], int]]:
        """(case ids, samples per batch) pools of a training batch: target first, source last."""
        target = self.training_cases_of(self.domain_table.target, training_cases)
        source = self.training_cases_of(self.domain_table.source, training_cases)
        if not target or not source:
            only = target or source
            self.print_to_log_file(f"WARNING: the training split has no {'source' if target else 'target'} cases; "
                                   f"every batch is drawn from the {len(only)} others")
            return [(only, self.batch_size)]
        n_target, n_source = split_batch(self.batch_size, self.target_share, ("target", "source"))
        return [(target, n_target), (source, n_source)]

    def training_cases_of(self, domains, training_cases) -> list[str]:
        """The cases of ``domains`` among ``training_cases``, in domain table order."""
        training = set(training_cases)
        return [c for c in self.domain_table.cases_of(domains) if c in training]

    def batch_twins(self, training_cases) -> dict[str, str]:
        """Target training cases whose source twin (same subject) is a training case too, with it."""
        table, training = self.domain_table, set(training_cases)
        pairs = {c: table.twin(c, table.source) for c in self.training_cases_of(table.target, training)}
        twins = {c: t for c, t in pairs.items() if t in training}
        if self.twin_batches and not twins:
            raise RuntimeError(f"{self.__class__.__name__} needs modality pairs, but no target training case of fold "
                               f"{self.fold} has a source case of the same subject in the training split; give "
                               f"the cases of one subject the same \"subject\" in the domain table")
        if twins:
            self.print_to_log_file(f"twin batches: {len(twins)} target cases with their source twin; "
                                   f"{len(pairs) - len(twins)} target training cases without one are not drawn")
        return twins

    def batch_twin_pairs(self, batch_size: int) -> torch.Tensor | None:
        """(B, B) bool: the modality pairs of a twin batch (:func:`twin_pairs`); None for mixed batches."""
        return twin_pairs(batch_size, self.n_twin_pairs, self.device) if self.n_twin_pairs else None

    def _to_device(self, batch: dict):
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) else \
            [target.to(self.device, non_blocking=True)]
        return data, target

    def autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def configure_optimizers(self):
        if not self.paper_optimizer:
            return super().configure_optimizers()
        self.initial_lr, self.weight_decay = 1e-4, 1e-5
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=0.0)

    # ------------------------------------------------------------------ loss
    def _build_loss(self):
        loss = PartialLabelLoss(self.label_manager.ignore_label, self.configuration_manager.batch_dice,
                                self.focal_gamma)
        scales = self._get_deep_supervision_scales() if self.enable_deep_supervision else [1]
        weights = np.array([1 / (2 ** i) for i in range(len(scales))])
        if len(weights) > 1:
            weights[-1] = 1e-6 if self.is_ddp else 0  # nnU-Net's choice: the lowest output is not supervised
        return DeepSupervisionWrapper(loss, weights / weights.sum())

    def supervised_loss(self, output, target: list[torch.Tensor], annotated: torch.Tensor) -> torch.Tensor:
        output = output if isinstance(output, (list, tuple)) else [output]
        return self.loss(output, target, [annotated] * len(output))

    # ------------------------------------------------------------------ data
    def get_dataloaders(self):
        """nnU-Net's loaders and augmentation; the training loader mixes domains (batch_pools)."""
        if self.dataset_class is None:
            self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
        # unlabeled target cases are entirely ignore label by design; the loader's warning about
        # them would repeat every batch (set before the augmentation workers fork, so they inherit it)
        warnings.filterwarnings("ignore", message="Warning! No annotated pixels in image!")
        patch_size = self.configuration_manager.patch_size
        scales = self._get_deep_supervision_scales()
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        labels = dict(foreground_labels=self.label_manager.foreground_labels,
                      regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
                      ignore_label=self.label_manager.ignore_label)
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        twins = self.batch_twins(dataset_tr.identifiers) if self.twin_batches is not False else {}
        # a pair is mirrored together by nnU-Net's per-sample transform; unpaired batches may mirror as a whole
        batch_mirroring = self.batch_mirroring and not twins
        tr_transforms = self.get_training_transforms(
            patch_size, rotation, scales, None if batch_mirroring else mirror_axes, dummy_2d,
            use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=self.is_cascaded, **labels)
        val_transforms = self.get_validation_transforms(scales, is_cascaded=self.is_cascaded, **labels)
        self.training_transforms = tr_transforms
        if self.augment_in_train_step:
            tr_transforms = None
        common = dict(oversample_foreground_percent=self.oversample_foreground_percent,
                      probabilistic_oversampling=self.probabilistic_oversampling)
        if twins:
            source = self.training_cases_of(self.domain_table.source, dataset_tr.identifiers)
            dl_tr = TwinBatchDataLoader(dataset_tr, self.batch_size, initial_patch_size, patch_size, self.label_manager,
                                        twins, source, transforms=tr_transforms, **common)
        else:
            dl_tr = MixedBatchDataLoader(dataset_tr, self.batch_size, initial_patch_size, patch_size,
                                         self.label_manager, self.batch_pools(dataset_tr.identifiers),
                                         transforms=tr_transforms, uniform_crops=self.augment_in_train_step,
                                         batch_mirror_axes=mirror_axes if batch_mirroring else None, **common)
        self.n_twin_pairs = dl_tr.n_pairs if twins else 0
        dl_val = nnUNetDataLoader(dataset_val, self.batch_size, patch_size, patch_size, self.label_manager,
                                  transforms=val_transforms, **common)
        processes = get_allowed_n_proc_DA()
        if processes == 0:
            generators = SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
        else:
            pin = self.device.type == "cuda"
            generators = (
                NonDetMultiThreadedAugmenter(dl_tr, None, processes, max(6, processes // 2), None, pin, 0.002),
                NonDetMultiThreadedAugmenter(dl_val, None, max(1, processes // 2), max(3, processes // 4), None, pin,
                                             0.002))
        for generator in generators:
            next(generator)
        return generators

    # ------------------------------------------------------------------ steps
    def train_step(self, batch: dict) -> dict:
        data, target = self._to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.training_loss(data, target, batch["keys"])
        self.optimizer_step(loss, self.optimizer, self.clipping_groups())
        self.counters.values["iterations"] += 1
        return {"loss": loss.detach().cpu().numpy()}

    def clipping_groups(self) -> list[list[torch.nn.Parameter]]:
        """The parameter sets whose gradient norms are clipped separately (one per network)."""
        return [list(self.network.parameters())]

    def optimizer_step(self, loss: torch.Tensor, optimizer, groups, max_norm: float = 12, averaged=()) -> None:
        """Backward, gradient clipping of each of ``groups`` at ``max_norm`` (nnU-Net's 12) and step, with AMP
        on CUDA. ``averaged``: parameters outside DDP wrappers whose gradients are averaged over the ranks before
        the step, as DDP averages those of the networks it wraps."""
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            average_gradients(averaged)
            self.grad_scaler.unscale_(optimizer)
        else:
            loss.backward()
            average_gradients(averaged)
        for parameters in groups:
            torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        if self.grad_scaler is not None:
            self.grad_scaler.step(optimizer)
            self.grad_scaler.update()
        else:
            optimizer.step()

    def validation_step(self, batch: dict) -> dict:
        data, target = self._to_device(batch)
        domains, annotated = self.batch_domains(batch["keys"]), self.batch_annotations(batch["keys"])
        with self.autocast():
            output = self.forward(data, domains)
            loss = self.supervised_loss(output, target, annotated)
        output = output[0] if isinstance(output, (list, tuple)) else output
        tp, fp, fn = self.online_counts(output, target[0], self.batch_annotations(batch["keys"], "ground_truth"))
        return {"loss": loss.detach().cpu().numpy(), "tp_hard": tp, "fp_hard": fp, "fn_hard": fn}

    def online_counts(self, logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor):
        """nnU-Net's pseudo-Dice counts per foreground class, over annotated (sample, class) pairs
        (validation counts hand-drawn classes only)."""
        onehot = torch.zeros_like(logits, dtype=torch.float16).scatter_(1, logits.argmax(1, keepdim=True), 1)
        target = target.clone()
        mask = None
        if self.label_manager.has_ignore_label:
            mask = (target != self.label_manager.ignore_label).float()
            target[target == self.label_manager.ignore_label] = 0
        tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=list(range(2, logits.ndim)), mask=mask)
        weight = annotated.float()
        return tuple((t * weight).sum(0)[1:].detach().cpu().numpy() for t in (tp, fp, fn))

    # ------------------------------------------------------------------ epochs and logging
    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)
        local = self.logger.local_logger
        for name in set(self._epoch_scalars) | set(local.extra_keys):
            values = self._epoch_scalars.get(name, [])
            local.register(name, self.current_epoch)
            self.logger.log(name, float(np.mean(values)) if values else float("nan"), self.current_epoch)
        if self._epoch_scalars:
            self.print_to_log_file(", ".join(f"{k} {np.mean(v):.4f}" for k, v in sorted(self._epoch_scalars.items())))
        self._epoch_scalars.clear()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus ``uda_state`` (everything registered with register_state)."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        torch.save({
            "network_weights": self.bare_network.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "uda_state": {name: obj.state_dict() for name, obj in self.extra_state.items()},
        }, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's restore (which in 2.8.1 accepts file names only), then the extra state."""
        if isinstance(filename_or_checkpoint, dict):
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "checkpoint.pth")
                torch.save(filename_or_checkpoint, path)
                return self.load_checkpoint(path)
        super().load_checkpoint(filename_or_checkpoint)
        checkpoint = torch.load(filename_or_checkpoint, map_location=self.device, weights_only=False)
        state = checkpoint.get("uda_state", {})
        for name, obj in self.extra_state.items():
            if name not in state:
                raise RuntimeError(f"{filename_or_checkpoint} has no saved state for '{name}'; it was written by "
                                   f"{checkpoint.get('trainer_name')}, not {self.__class__.__name__}")
            obj.load_state_dict(state[name])

    # ------------------------------------------------------------------ final validation
    @contextmanager
    def _validation_domain(self, domain: str):
        """Validate only ``domain``'s cases, with ``domain`` as the network's inference domain
        (an exported nnUNet_uda_inference_domain is masked meanwhile)."""
        self._validation_domain_filter = domain
        network = self.bare_network
        previous = int(network.inference_domain)
        override = os.environ.pop(INFERENCE_DOMAIN_ENV, None)
        network.inference_domain.fill_(self.domain_table.domain_index(domain))
        try:
            yield
        finally:
            self._validation_domain_filter = None
            network.inference_domain.fill_(previous)
            if override is not None:
                os.environ[INFERENCE_DOMAIN_ENV] = override

    def do_split(self):
        tr_keys, val_keys = super().do_split()
        domain = getattr(self, "_validation_domain_filter", None)
        if domain is not None:
            val_keys = [k for k in val_keys if self.domain_table.domain_of(k) == domain]
        return tr_keys, val_keys

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation, run once per domain so every case is segmented with its
        own domain's normalisation; the summary then covers all validation cases."""
        if not isinstance(self.bare_network, DomainConditionedUNet):
            return super().perform_actual_validation(save_probabilities)
        _, val_keys = super().do_split()
        domains = list(dict.fromkeys(self.domain_table.domain_of(k) for k in val_keys))
        for domain in domains:
            with self._validation_domain(domain):
                super().perform_actual_validation(save_probabilities)
        if len(domains) > 1 and self.local_rank == 0:
            folder = os.path.join(self.output_folder, "validation")
            metrics = compute_metrics_on_folder(
                os.path.join(self.preprocessed_dataset_folder_base, "gt_segmentations"), folder,
                os.path.join(folder, "summary.json"), self.plans_manager.image_reader_writer_class(),
                self.dataset_json["file_ending"], self.label_manager.foreground_labels,
                self.label_manager.ignore_label, chill=True, num_processes=default_num_processes)
            self.print_to_log_file("Mean validation Dice over all domains:", metrics["foreground_mean"]["Dice"],
                                   also_print_to_console=True)


class nnUNetTrainerUDA_Adam(nnUNetTrainerUDA):
    """Pseudo-label training with the AICL paper's optimiser (``paper_optimizer``), that of
    ``nnUNetTrainerAICL``: its pseudo-label-only baseline."""
    paper_optimizer = True
