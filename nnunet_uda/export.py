"""Export of a trained plugin model to a plain nnU-Net model, which ``nnUNetv2_predict`` runs without the plugin.

A network with conditional instance norms (:class:`~nnunet_uda.nn.conditional_norm.ConditionalInstanceNorm`)
normalises with the (gamma_m, beta_m) of a domain m, stored as weight and bias of shape (domains, channels) where
nnU-Net's ``InstanceNorm`` stores one weight and bias of shape (channels,). For one domain d,

    CIN(z) = gamma_d * (z - mu(z)) / sigma(z) + beta_d

is nnU-Net's affine instance norm with weight gamma_d and bias beta_d, so folding takes row d of every conditional
norm's weight and bias; every other parameter of the network is nnU-Net's own already (the plugin's networks are
nnU-Net's with norms swapped, :mod:`nnunet_uda.nn.network`). The exported network is the one
``nnUNetTrainer.build_network_architecture`` builds from the plans, so it predicts as fast as any nnU-Net model.
Networks without conditional norms (``use_conditional_norm = False``, network A of the co-training trainers) are
nnU-Net's network already: their weights are copied.

The export is an ``nnUNet_results`` model folder, ``<dataset>/nnUNetTrainer__<plans>__<configuration>``: the plans
(without the plugin's ``"uda"`` block, which describes the domains of a conditional-norm network), the dataset.json
as it is (its domain table included: nnU-Net ignores it and copies it beside its predictions), the dataset
fingerprint, and per fold the chosen checkpoints (``network_weights``, ``trainer_name`` ``nnUNetTrainer``,
``init_args``, ``current_epoch``, ``inference_allowed_mirroring_axes``; the optimiser and the plugin's
``uda_state`` are dropped), ``progress.png`` and the final validation. ``uda_export.json`` records the source model
and the folded domain.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from nnunet_uda.data.raw import atomic_folder
from nnunet_uda.planning import PLANS_KEY

PLAIN_TRAINER = "nnUNetTrainer"
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
EXPORT_FILE = "uda_export.json"
#: the buffer of a conditional-norm network that holds its stored inference domain
DOMAIN_BUFFER = "inference_domain"
#: checkpoint entries kept besides the weights and the trainer name: what nnU-Net's predictor reads, and the epoch
KEPT_ENTRIES = ("init_args", "current_epoch", "inference_allowed_mirroring_axes")


class ExportError(RuntimeError):
    """A model cannot be exported; the message names what is wrong and the fix."""


@dataclass(frozen=True)
class ExportPlan:
    """A checked export: the source model folder, the checkpoints of each fold and the domain to fold."""

    source: Path  # <nnUNet_results>/<dataset>/<trainer>__<plans>__<configuration>
    checkpoints: dict[str, tuple[str, ...]]  # fold -> checkpoint file names
    domains: tuple[str, ...]  # the plans' domains (empty without a domain table)
    domain: str | None  # the folded domain; None for networks without conditional norms

    @property
    def dataset(self) -> str:
        return self.source.parent.name

    @property
    def trainer(self) -> str:
        return self.source.name.split("__")[0]

    @property
    def plans_identifier(self) -> str:
        return self.source.name.split("__")[1]

    @property
    def configuration(self) -> str:
        return self.source.name.split("__")[2]

    @property
    def identifier(self) -> str:
        """The exported model's folder name, ``nnUNetTrainer__<plans>__<configuration>``."""
        return f"{PLAIN_TRAINER}__{self.plans_identifier}__{self.configuration}"


def resolve_dataset(dataset: str | int) -> str:
    """nnU-Net's dataset folder name for an id or name (looked up in nnUNet_raw, _preprocessed and _results)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(str(dataset))
    except (RuntimeError, ValueError) as error:
        raise ExportError(f"dataset {dataset!r}: {error}") from None


def fold_network_weights(weights: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                         domain: int | None) -> dict[str, torch.Tensor]:
    """``weights`` of a plugin network as the state dict of nnU-Net's network ``reference`` (its keys, its shapes).

    A conditional norm's (domains, channels) weight or bias becomes row ``domain``; the stored inference domain is
    dropped; every other entry must be ``reference``'s, shape included, and is taken as it is.
    """
    missing = [k for k in reference if k not in weights]
    unexpected = [k for k in weights if k not in reference and k != DOMAIN_BUFFER]
    if missing or unexpected:
        raise ExportError("the network is not nnU-Net's network of the plans with conditional norms: "
                          + "; ".join(f"{what} {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                                      for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys))
    folded = {}
    for key, target in reference.items():
        value = weights[key]
        if value.shape == target.shape:
            folded[key] = value
        elif domain is not None and value.shape[1:] == target.shape and 0 <= domain < value.shape[0]:
            folded[key] = value[domain].clone()
        else:
            raise ExportError(f"{key} has shape {tuple(value.shape)}, nnU-Net's network {tuple(target.shape)}"
                              + ("" if domain is None else f" (domain index {domain})"))
    return folded


def plain_network(plans: dict, dataset_json: dict, configuration: str) -> torch.nn.Module:
    """nnU-Net's network of ``configuration`` as its predictor builds it (``nnUNetTrainer``, no deep supervision)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    return nnUNetTrainer.build_network_architecture(
        plans_manager, configuration_manager, determine_num_input_channels(plans_manager, configuration_manager,
                                                                           dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)


def model_folder(results: str | os.PathLike | None, dataset: str, trainer: str, plans: str,
                 configuration: str) -> Path:
    """The trained model's folder in ``results`` (``nnUNet_results``), after checking that it exists."""
    if not results:
        raise ExportError("nnUNet_results is not set; export it as for nnUNetv2_train (the folder that holds the "
                          "trained model)")
    dataset_folder = Path(results) / dataset
    if not dataset_folder.is_dir():
        present = sorted(p.name for p in Path(results).glob("Dataset*") if p.is_dir())
        raise ExportError(f"no dataset {dataset} in {results} (datasets there: {', '.join(present) or 'none'}); "
                          f"check -d and nnUNet_results")
    folder = dataset_folder / f"{trainer}__{plans}__{configuration}"
    if not folder.is_dir():
        present = sorted(p.name for p in dataset_folder.iterdir() if p.is_dir() and p.name.count("__") == 2)
        raise ExportError(f"no trained model in {folder} (models of {dataset}: {', '.join(present) or 'none'}); "
                          f"check -tr, -p and -c")
    return folder


def _load(path: Path) -> dict:
    """A checkpoint, memory-mapped: its tensors are read from disk when used."""
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)


def _fold_checkpoints(folder: Path, folds: Sequence[str] | None,
                      checkpoints: Sequence[str] | None) -> dict[str, tuple[str, ...]]:
    """The checkpoints to export of each fold (see :func:`prepare_export`), after checking that they exist."""
    trained = sorted((p.name[len("fold_"):] for p in folder.glob("fold_*") if p.is_dir()),
                     key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))
    if not trained:
        raise ExportError(f"{folder} has no trained fold (fold_X folders); train one first")
    chosen = {}
    for fold in folds or trained:
        fold_folder = folder / f"fold_{fold}"
        if not fold_folder.is_dir():
            raise ExportError(f"fold {fold} of the model is not trained ({fold_folder} does not exist); trained "
                              f"folds: {' '.join(trained)}; pass -f with those")
        present = [name for name in checkpoints or CHECKPOINTS if (fold_folder / name).is_file()]
        if checkpoints and len(present) < len(checkpoints):
            missing = [name for name in checkpoints if name not in present]
            raise ExportError(f"{fold_folder / missing[0]} does not exist (present: "
                              f"{', '.join(sorted(p.name for p in fold_folder.glob('*.pth'))) or 'none'}); "
                              f"finish the training or choose other checkpoints")
        if not present:
            raise ExportError(f"{fold_folder} has neither {' nor '.join(CHECKPOINTS)}: finish its training or leave "
                              f"fold {fold} out (-f)")
        chosen[fold] = tuple(present)
    return chosen


def stored_domains(weights: Mapping[str, Mapping[str, torch.Tensor]], domains: Sequence[str],
                   plans_file: Path) -> dict[str, str] | None:
    """The inference domain stored with each checkpoint's weights (``weights``: ``fold_X/<checkpoint>`` to its
    ``network_weights``), by the same keys; ``None`` for networks without conditional norms."""
    stored = {}
    for where, state in weights.items():
        index = state.get(DOMAIN_BUFFER)
        if index is None:
            return None
        if not 0 <= int(index) < len(domains):
            raise ExportError(f"{plans_file} does not list the domains of the conditional-norm network "
                              f"(plans[\"{PLANS_KEY}\"][\"domains\"]); plan with nnUNetv2_uda_plan_and_preprocess")
        stored[where] = domains[int(index)]
    return stored


def choose_domain(trainer: str, domains: Sequence[str], stored: Mapping[str, str] | None,
                  requested: str | None) -> str | None:
    """The domain to fold: ``requested``, else the one stored with every checkpoint (``None`` without conditional
    norms, where a ``requested`` domain is an error)."""
    if stored is None:
        if requested is not None:
            raise ExportError(f"-domain {requested}: the {trainer} network has no conditional norms, so it has no "
                              f"inference domain; leave -domain out")
        return None
    if requested is not None:
        if requested not in domains:
            raise ExportError(f"-domain {requested} is not a domain of the model; its domains: {', '.join(domains)}")
        return requested
    if len(set(stored.values())) > 1:
        found = ", ".join(f"{where}: {d}" for where, d in stored.items())
        raise ExportError(f"the checkpoints store different inference domains ({found}); choose one with -domain")
    return next(iter(stored.values()))


def prepare_export(folder: Path, folds: Sequence[str] | None = None, checkpoints: Sequence[str] | None = None,
                   domain: str | None = None) -> ExportPlan:
    """Check everything an export of the model in ``folder`` reads, before anything is written.

    ``folds`` default to every trained fold; ``checkpoints`` to those of :data:`CHECKPOINTS` present in each fold;
    ``domain`` to the inference domain stored with the weights (what nnU-Net's predictor uses when
    ``nnUNet_uda_inference_domain`` is not set). Every checkpoint is folded once to check it.
    """
    folder = Path(folder)
    if folder.name.count("__") != 2:
        raise ExportError(f"{folder} is not an nnU-Net model folder (<trainer>__<plans>__<configuration>)")
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise ExportError(f"{folder / name} is missing; nnUNetv2_train writes it when training starts")
    plans = json.loads((folder / "plans.json").read_text())
    domains = tuple(plans.get(PLANS_KEY, {}).get("domains", ()))
    chosen = _fold_checkpoints(folder, folds, checkpoints)
    weights = {f"fold_{fold}/{name}": _load(folder / f"fold_{fold}" / name)["network_weights"]
               for fold, names in chosen.items() for name in names}
    trainer = folder.name.split("__")[0]
    plan = ExportPlan(folder, chosen, domains,
                      choose_domain(trainer, domains, stored_domains(weights, domains, folder / "plans.json"), domain))
    reference = plain_network(plans, json.loads((folder / "dataset.json").read_text()),
                              plan.configuration).state_dict()
    for where, state in weights.items():
        try:
            fold_network_weights(state, reference, domain_index(plan))
        except ExportError as error:
            raise ExportError(f"{folder / where}: {error}") from None
    return plan


def domain_index(plan: ExportPlan) -> int | None:
    """The position of the folded domain among the plans' domains (``None`` without conditional norms)."""
    return None if plan.domain is None else plan.domains.index(plan.domain)


def plain_checkpoint(checkpoint: Mapping, reference: Mapping[str, torch.Tensor], domain: int | None, plans: dict,
                     dataset_json: dict) -> dict:
    """nnU-Net's checkpoint of the folded network: weights, trainer name, the kept entries (``init_args`` with the
    exported plans and dataset.json)."""
    plain = {"network_weights": fold_network_weights(checkpoint["network_weights"], reference, domain),
             "trainer_name": PLAIN_TRAINER}
    plain.update({key: checkpoint[key] for key in KEPT_ENTRIES if key in checkpoint})
    if "init_args" in plain:
        plain["init_args"] = dict(plain["init_args"], plans=plans, dataset_json=dataset_json)
    return plain


def write_plain_model(plan: ExportPlan, destination: Path, validation_predictions: bool = True) -> None:
    """Write the exported model folder of ``plan`` to ``destination`` (created if needed).

    The final validation is copied whole, or only its ``summary.json`` without ``validation_predictions``.
    """
    source = plan.source
    destination.mkdir(parents=True, exist_ok=True)
    plans = json.loads((source / "plans.json").read_text())
    plans.pop(PLANS_KEY, None)
    dataset_json = json.loads((source / "dataset.json").read_text())
    (destination / "plans.json").write_text(json.dumps(plans, indent=4) + "\n")
    shutil.copy2(source / "dataset.json", destination / "dataset.json")
    if (source / "dataset_fingerprint.json").is_file():
        shutil.copy2(source / "dataset_fingerprint.json", destination / "dataset_fingerprint.json")
    reference = plain_network(plans, dataset_json, plan.configuration).state_dict()
    for fold, names in plan.checkpoints.items():
        fold_source, fold_destination = source / f"fold_{fold}", destination / f"fold_{fold}"
        fold_destination.mkdir()
        for name in names:
            torch.save(plain_checkpoint(_load(fold_source / name), reference, domain_index(plan), plans,
                                        dataset_json), fold_destination / name)
        if (fold_source / "progress.png").is_file():
            shutil.copy2(fold_source / "progress.png", fold_destination / "progress.png")
        validation = fold_source / "validation"
        if validation_predictions and validation.is_dir():
            shutil.copytree(validation, fold_destination / "validation")
        elif (validation / "summary.json").is_file():
            (fold_destination / "validation").mkdir()
            shutil.copy2(validation / "summary.json", fold_destination / "validation" / "summary.json")
    record = {"source": f"{plan.dataset}/{source.name}", "trainer": plan.trainer, "domain": plan.domain,
              "domains": list(plan.domains), "checkpoints": {f"fold_{f}": list(n) for f, n in plan.checkpoints.items()}}
    (destination / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")


def export_plain_model(results: str | os.PathLike | None, dataset: str, trainer: str, plans: str,
                       configuration: str, output: str | os.PathLike, folds: Sequence[str] | None = None,
                       checkpoints: Sequence[str] | None = None, domain: str | None = None,
                       overwrite: bool = False) -> tuple[ExportPlan, Path]:
    """Export the model ``<results>/<dataset>/<trainer>__<plans>__<configuration>`` to the ``nnUNet_results``-style
    root ``output`` (see the module docstring); returns the plan and the exported model folder.

    Everything is checked before anything is written (:func:`prepare_export`); the folder is written beside its
    final place and moved there when complete. An existing exported folder is an error unless ``overwrite``, which
    replaces it whole.
    """
    plan = prepare_export(model_folder(results, dataset, trainer, plans, configuration), folds, checkpoints, domain)
    destination = Path(output) / plan.dataset / plan.identifier
    if destination.resolve() == plan.source.resolve():
        raise ExportError(f"the export {destination} would replace the model it is made from; choose another -o")
    if destination.exists() and not (overwrite and destination.is_dir()):
        raise ExportError(f"{destination} exists; choose another -o, or pass --overwrite to replace it"
                          if destination.is_dir() else f"{destination} exists and is not a folder; choose another -o")
    with atomic_folder(destination, overwrite=True) as tmp:
        write_plain_model(plan, tmp)
    return plan, destination
