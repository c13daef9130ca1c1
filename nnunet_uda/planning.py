"""Domain-aware planning: nnU-Net's fingerprinting, planning and preprocessing, plus domains.

Through nnU-Net's own API, with one of nnU-Net's planners (ResEnc M by default) extended to:

- normalise every channel with per-image z-scoring (``ZScoreNormalization``, no mask): images
  are harmonised per modality when the raw dataset is written (:mod:`nnunet_uda.intensity`), and
  nnU-Net's dataset-wide CT scheme cannot serve a channel that holds CT and MRI;
- give its preprocessed data identifiers of its own (``<plans>_<configuration>``) so they never
  mix with data that nnU-Net's unmodified planners preprocess with other normalisations;
- store what plugin networks need at inference in the plans (``plans["uda"]``: the domain list in
  table order, the target domains and the default inference domain).
- derive AICL's PGPS patch sizes from the organ extents of the training labels
  (:mod:`nnunet_uda.organ_extents`; ``plans["uda"]["pgps"]``, with a box plot
  ``pgps_extents_<configuration>.png`` beside the plans).

Cross-validation folds (``splits_final.json``) split only ground-truth labeled cases, each domain
spread over the folds; unlabeled and pseudo-labeled cases are training data in every fold, so no
fold validates on unlabeled cases.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.residual_unets.residual_encoder_unet_planners import (
    nnUNetPlannerResEncL, nnUNetPlannerResEncM, nnUNetPlannerResEncXL)

from nnunet_uda.domains import DomainTable

PLANS_KEY = "uda"
#: plans identifier written by the default planner preset (ResEnc M)
DEFAULT_PLANS = "nnUNetResEncUNetMPlans"


def plans_domain_block(table: DomainTable) -> dict:
    """What ``plans["uda"]`` holds: enough to build and run a domain-conditioned network."""
    return {"domains": table.domain_names,
            "modalities": {d.name: d.modality for d in table.domains.values()},
            "target": list(table.target),
            "inference_domain": table.target[0]}


def _domain_aware(planner: type[ExperimentPlanner]) -> type[ExperimentPlanner]:
    class DomainAwarePlanner(planner):
        def determine_normalization_scheme_and_whether_mask_is_used_for_norm(self):
            n = len(self.dataset_json["channel_names"])
            return ["ZScoreNormalization"] * n, [False] * n

        def generate_data_identifier(self, configuration_name: str) -> str:
            return f"{self.plans_identifier}_{configuration_name}"

        def save_plans(self, plans):
            plans[PLANS_KEY] = plans_domain_block(DomainTable.from_dataset_json(self.dataset_json))
            super().save_plans(plans)

    DomainAwarePlanner.__name__ = DomainAwarePlanner.__qualname__ = f"DomainAware{planner.__name__}"
    return DomainAwarePlanner


PLANNERS = {name: _domain_aware(cls) for name, cls in {
    "ResEncM": nnUNetPlannerResEncM, "ResEncL": nnUNetPlannerResEncL, "ResEncXL": nnUNetPlannerResEncXL,
    "default": ExperimentPlanner}.items()}


def domain_aware_splits(table: DomainTable, n_folds: int = 5, seed: int = 12345) -> list[dict]:
    """Cross-validation folds over ground-truth labeled cases, stratified by domain.

    Within each domain the labeled cases are shuffled (seeded) and dealt to the folds in turn,
    continuing where the previous domain stopped, so small domains spread too. Every other case
    (unlabeled or pseudo-labeled) is training data in every fold. Ground-truth cases whose
    unannotated classes carry pseudo labels (``pseudo_labels``) are labeled cases.
    """
    labeled = set(table.cases_with_labels("ground_truth"))
    if len(labeled) < n_folds:
        raise ValueError(f"the dataset has {len(labeled)} ground-truth labeled training cases, fewer than the "
                         f"{n_folds} folds asked for; label more cases or ask for fewer folds (-folds)")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    position = 0
    for domain in table.domain_names:
        cases = sorted(c for c in table.cases_of([domain]) if c in labeled)
        for case in rng.permutation(cases):
            folds[position % n_folds].append(str(case))
            position += 1
    everyone = sorted(table.cases)
    return [{"train": [c for c in everyone if c not in set(val)], "val": sorted(val)} for val in folds]


def _set_batch_size(plans_file: Path, batch_size: int) -> None:
    with open(plans_file) as f:
        plans = json.load(f)
    for configuration in plans["configurations"].values():
        if "batch_size" in configuration:
            configuration["batch_size"] = batch_size
    with open(plans_file, "w") as f:
        json.dump(plans, f, indent=4)


def plan_and_preprocess(dataset_id: int, planner: str = "ResEncM", configurations=("3d_fullres",),
                        num_processes: int = 2, n_folds: int = 5, verify: bool = True,
                        batch_size: int | None = None) -> Path:
    """Fingerprint, plan and preprocess ``dataset_id``; write domain-aware folds. Returns the plans file.

    ``batch_size`` replaces the planned batch size of every configuration (for CPU runs and small
    machines; nnU-Net plans it for a GPU memory budget).
    """
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                     plan_experiment_dataset, preprocess)
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

    from nnunet_uda.data.raw import find_raw_dataset, load_dataset_json
    from nnunet_uda.verify import verify_dataset

    if planner not in PLANNERS:
        raise ValueError(f"unknown planner {planner!r}; choose one of {', '.join(PLANNERS)}")
    raw = find_raw_dataset(dataset_id)
    if verify:
        verify_dataset(raw, num_processes=num_processes)
    table = DomainTable.from_dataset_json(load_dataset_json(raw), where=str(raw / "dataset.json"))
    splits = domain_aware_splits(table, n_folds)

    extract_fingerprint_dataset(dataset_id, num_processes=num_processes, check_dataset_integrity=False)
    _, plans_identifier = plan_experiment_dataset(dataset_id, PLANNERS[planner])
    preprocessed = Path(nnUNet_preprocessed) / convert_id_to_dataset_name(dataset_id)
    if batch_size is not None:
        _set_batch_size(preprocessed / f"{plans_identifier}.json", batch_size)
    preprocess([dataset_id], plans_identifier, list(configurations), [num_processes] * len(configurations))

    with open(preprocessed / "splits_final.json", "w") as f:
        json.dump(splits, f, indent=2)
    plans_file = preprocessed / f"{plans_identifier}.json"
    _add_pgps_statistics(plans_file, configurations, table)
    return plans_file


def _add_pgps_statistics(plans_file: Path, configurations, table: DomainTable) -> None:
    """Store PGPS patch sizes per configuration in ``plans["uda"]["pgps"]`` and plot the extents."""
    from nnunet_uda.organ_extents import pgps_statistics, plot_extents

    plans = json.loads(plans_file.read_text())
    block = plans[PLANS_KEY].setdefault("pgps", {})
    for configuration in configurations:
        try:
            block[configuration] = pgps_statistics(plans_file.parent, plans, configuration, table)
        except ValueError as error:
            print(f"PGPS patch sizes not derived for {configuration}: {error}; AICL will use its default")
            continue
        plot_extents(block[configuration], plans_file.parent / f"pgps_extents_{configuration}.png",
                     f"{plans['dataset_name']} {configuration}")
    plans_file.write_text(json.dumps(plans, indent=4))
