"""The trained nnU-Net model of a submission: :class:`ModelSpec` names it as nnU-Net's commands do; the checks
that its folds and checkpoints exist and that it reads the challenge's images; its post-processing.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from nnunet_uda.postprocessing import PostprocessingConfig, PostprocessingError, named_config
from nnunet_uda.submission.challenge import CHANNEL_SUFFIX, FILE_ENDING, SubmissionError

DEFAULT_FOLDS = ("0", "1", "2", "3", "4")
DEFAULT_CHECKPOINT = "checkpoint_final.pth"


@dataclass(frozen=True)
class ModelSpec:
    """A trained nnU-Net model as nnU-Net's commands name it."""

    dataset: str  # the dataset's folder name, e.g. Dataset500_FLARE
    configuration: str
    trainer: str
    plans: str
    folds: tuple[str, ...]
    checkpoint: str

    @property
    def identifier(self) -> str:
        """nnU-Net's name of the model folder, ``trainer__plans__configuration``."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    def train_command(self, fold: str = "FOLD", *flags: str) -> str:
        dataset_id = str(int(self.dataset[len("Dataset"):].split("_", 1)[0]))
        return shlex.join(["nnUNetv2_train", dataset_id, self.configuration, fold, "-tr", self.trainer,
                           "-p", self.plans, *flags])


def model_folder(spec: ModelSpec) -> Path:
    """The model's folder in ``nnUNet_results`` (``<dataset>/<trainer>__<plans>__<configuration>``)."""
    results = os.environ.get("nnUNet_results")
    if not results:
        raise SubmissionError("nnUNet_results is not set; export it as for nnUNetv2_train (the folder that holds "
                              f"{spec.dataset}/{spec.identifier})")
    return Path(results) / spec.dataset / spec.identifier


def check_trained_model(spec: ModelSpec) -> Path:
    """The model folder, after checking that the plans, dataset.json, fingerprint, folds and checkpoints exist."""
    folder = model_folder(spec)
    if not folder.is_dir():
        raise SubmissionError(f"no trained model in {folder}; train it ({spec.train_command()}) or check -d, -c, -tr, "
                              f"-p and nnUNet_results")
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        if not (folder / name).is_file():
            raise SubmissionError(f"{folder / name} is missing; nnUNetv2_train writes it when training starts: "
                                  f"train the model again ({spec.train_command()})")
    trained = sorted(p.name[len("fold_"):] for p in folder.glob("fold_*") if p.is_dir())
    for fold in spec.folds:
        _check_fold(spec, folder / f"fold_{fold}", fold, trained)
    return folder


def _check_fold(spec: ModelSpec, fold_folder: Path, fold: str, trained: Sequence[str]) -> None:
    if not fold_folder.is_dir():
        raise SubmissionError(f"fold {fold} of the model is not trained ({fold_folder} does not exist); trained folds: "
                              f"{' '.join(trained) or 'none'}; pass -f with those, or train it "
                              f"({spec.train_command(fold)})")
    checkpoint = fold_folder / spec.checkpoint
    if not checkpoint.is_file():
        present = sorted(p.name for p in fold_folder.glob("checkpoint_*.pth"))
        raise SubmissionError(f"{checkpoint} does not exist; finish the training ({spec.train_command(fold, '--c')}) "
                              f"or choose another checkpoint with -chk (present: {', '.join(present) or 'none'})")


def check_challenge_format(dataset_json: Mapping, where: str) -> None:
    """The challenge gives one image per case, ``<case>_0000.nii.gz``: the model must read exactly that."""
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    if len(channels) != 1:
        raise SubmissionError(f"{where}: the model reads {len(channels)} channels, but a challenge case is one image "
                              f"(<case>{CHANNEL_SUFFIX}{FILE_ENDING}); train a single-channel model")
    if dataset_json.get("file_ending") != FILE_ENDING:
        raise SubmissionError(f"{where}: the model's file_ending is {dataset_json.get('file_ending')!r}, but the "
                              f"challenge's images are {FILE_ENDING}; train on a {FILE_ENDING} dataset")


def postprocessing_config(spec: str | None, dataset_json: Mapping) -> PostprocessingConfig | None:
    """The post-processing of ``-postprocess``: a preset name (``flare``), a configuration file, or none."""
    if spec is None:
        return None
    try:
        return named_config(spec, dataset_json)
    except (FileNotFoundError, PostprocessingError) as error:
        raise SubmissionError(f"-postprocess: {error}") from None
