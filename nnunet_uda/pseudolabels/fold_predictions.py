"""One prediction per fold of a cross-validated nnU-Net model, kept on disk with its probabilities.

nnU-Net's predictor averages the folds it is given; the consistency score (eq. 8) needs each fold's
own prediction, so every fold predicts every case on its own, through nnU-Net's
``nnUNetPredictor`` (sliding window, Gaussian weighting, mirroring: nnU-Net's defaults). Fold ``f``
writes ``<output>/fold_<f>/<case>.nii.gz`` and its softmax probabilities ``<case>.npz`` (nnU-Net's
export, in the geometry of the input image).

- Resumable: a case whose ``.nii.gz`` exists is not predicted again (nnU-Net writes the ``.npz``
  first and the segmentation last, so the segmentation marks a finished export).
- Sharded like ``nnUNetv2_predict -num_parts -part_id``: part ``i`` of ``n`` predicts every
  ``n``-th case of the sorted case list starting at ``i``, for every fold.
- Models with conditional norms (plugin trainers) predict each case with the norms of its own
  domain (the domain table of the candidates); nnU-Net's own networks ignore domains.
"""
from __future__ import annotations

import os
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, Sequence

import torch

from nnunet_uda.nn.network import INFERENCE_DOMAIN_ENV, DomainConditionedUNet


def fold_folder(output: Path, fold: int | str) -> Path:
    return Path(output) / f"fold_{fold}"


def shard(cases: Sequence[str], num_parts: int = 1, part_id: int = 0) -> list[str]:
    """The cases of part ``part_id`` of ``num_parts`` (nnU-Net's ``-num_parts``/``-part_id``)."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"part_id must lie in [0, num_parts); got part_id={part_id}, num_parts={num_parts}")
    return sorted(cases)[part_id::num_parts]


def missing_predictions(cases: Sequence[str], folder: Path, file_ending: str) -> list[str]:
    return [c for c in cases if not (Path(folder) / f"{c}{file_ending}").is_file()]


def predict_folds(model_folder: Path, folds: Sequence[int | str], images: Mapping[str, Sequence[Path]],
                  domains: Mapping[str, str], output: Path, file_ending: str, num_parts: int = 1, part_id: int = 0,
                  device: torch.device = torch.device("cpu"), checkpoint: str = "checkpoint_final.pth",
                  use_mirroring: bool = True, progress: bool = True) -> None:
    """Predict this part's cases of ``images`` (case -> channel files) with each fold separately."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    cases = shard(list(images), num_parts, part_id)
    for fold in folds:
        folder = fold_folder(output, fold)
        todo = missing_predictions(cases, folder, file_ending)
        if not todo:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        predictor = nnUNetPredictor(use_mirroring=use_mirroring, device=device, verbose=False,
                                    allow_tqdm=progress)
        predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(fold,),
                                                       checkpoint_name=checkpoint)
        for domain, group in _by_domain(todo, domains, predictor.network).items():
            with _inference_domain(domain):
                predictor.predict_from_files([[str(p) for p in images[c]] for c in group],
                                             [str(folder / c) for c in group], save_probabilities=True,
                                             overwrite=True, num_processes_preprocessing=1,
                                             num_processes_segmentation_export=1)


def _by_domain(cases: Sequence[str], domains: Mapping[str, str], network) -> dict[str | None, list[str]]:
    """Cases grouped by the domain whose norms predict them (one group, None, for other networks)."""
    conditioned = isinstance(network, DomainConditionedUNet)
    groups: dict[str | None, list[str]] = defaultdict(list)
    for case in cases:
        domain = domains[case] if conditioned else None
        if conditioned and domain not in network.domain_names:
            raise ValueError(f"case {case}: domain {domain!r} is not one of the model's domains "
                             f"({', '.join(network.domain_names)}); map it in the candidates' domain table")
        groups[domain].append(case)
    return dict(groups)


@contextmanager
def _inference_domain(domain: str | None):
    """``nnUNet_uda_inference_domain`` set to ``domain`` for a block (untouched for ``None``)."""
    if domain is None:
        yield
        return
    previous = os.environ.get(INFERENCE_DOMAIN_ENV)
    os.environ[INFERENCE_DOMAIN_ENV] = domain
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(INFERENCE_DOMAIN_ENV, None)
        else:
            os.environ[INFERENCE_DOMAIN_ENV] = previous
