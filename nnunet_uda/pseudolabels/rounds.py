"""A self-training round: score the folds' predictions, select cases, write the next dataset.

FLARE 2024 Task 3, section 2.3: every unlabeled target case is predicted by each fold of the
previous round's model (:mod:`~nnunet_uda.pseudolabels.fold_predictions`); its organs get the
fold-consistency score of eq. 8 and the case the mean of its organ scores; the best cases of each
target modality are selected (:mod:`~nnunet_uda.pseudolabels.selection`); their fused pseudo labels
(eq. 9) join the labeled source cases in a new nnU-Net raw dataset, whose domain table marks them
``"labels": "pseudo"`` with the round number.

Scoring streams one case at a time (N fold label maps and one probability sum in memory), so
memory does not grow with the number of cases.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_uda.data.raw import atomic_folder, dataset_folder_name, save_json
from nnunet_uda.domains import TABLE_KEY, DomainTable
from nnunet_uda.pseudolabels.consistency import class_consistency, fused_label
from nnunet_uda.pseudolabels.fold_predictions import fold_folder, missing_predictions
from nnunet_uda.pseudolabels.selection import SelectionRule, select_cases


@dataclass
class CaseScore:
    case: str
    domain: str
    organs: dict[str, float]
    score: float
    selected: bool = False

    def to_json(self) -> dict:
        return {"domain": self.domain, "score": self.score, "selected": self.selected, "organs": self.organs}


@dataclass
class RoundInputs:
    """What a round reads: the dataset holding the labeled source cases and the unlabeled
    candidates (its raw folder and ``dataset.json``), and the folds' predictions."""
    raw: Path
    dataset_json: dict
    predictions: Path
    folds: list[int | str]
    #: eq. 8's score for two folds that both leave an organ out (:mod:`~nnunet_uda.pseudolabels.consistency`)
    absent_agreement: float = 1.0
    table: DomainTable = field(init=False)

    def __post_init__(self):
        self.table = DomainTable.from_dataset_json(self.dataset_json, where=str(Path(self.raw) / "dataset.json"))

    @property
    def file_ending(self) -> str:
        return self.dataset_json["file_ending"]

    @property
    def organs(self) -> dict[str, int]:
        return dict(self.table.label_names)

    def candidates(self) -> list[str]:
        """Unlabeled training cases of the target domains."""
        return [c for c in self.table.cases_of(self.table.target) if self.table.entry(c).labels == "none"]

    def labeled(self) -> list[str]:
        """Training cases with labels (hand-drawn or pseudo), kept in the next round's dataset."""
        return [c for c, e in self.table.cases.items() if e.labels != "none"]

    def channel_files(self, case: str, folder: str = "imagesTr") -> list[Path]:
        n = len(self.dataset_json["channel_names"])
        return [Path(self.raw) / folder / f"{case}_{i:04d}{self.file_ending}" for i in range(n)]


def score_case(inputs: RoundInputs, case: str) -> tuple[CaseScore, sitk.Image]:
    """Eq. 8 per organ and the case score, and the fused pseudo label (eq. 9) as an image in the
    case's geometry, from the folds' exported segmentations and probabilities."""
    segmentations, probability_sum, reference = [], None, None
    for fold in inputs.folds:
        folder = fold_folder(inputs.predictions, fold)
        image = sitk.ReadImage(str(folder / f"{case}{inputs.file_ending}"))
        if reference is None:
            reference = image
        segmentations.append(sitk.GetArrayFromImage(image))
        with np.load(folder / f"{case}.npz") as npz:
            probabilities = npz["probabilities"].astype(np.float32)
        probability_sum = probabilities if probability_sum is None else probability_sum + probabilities
    organs = inputs.organs
    scores = class_consistency(np.stack(segmentations), list(organs.values()), inputs.absent_agreement)
    fused = sitk.GetImageFromArray(fused_label(probability_sum))
    fused.CopyInformation(reference)
    organ_scores = {name: float(s) for name, s in zip(organs, scores)}
    return CaseScore(case, inputs.table.domain_of(case), organ_scores, float(np.mean(scores))), fused


def check_predictions(inputs: RoundInputs, cases: Iterable[str]) -> None:
    """Every fold must have predicted every case (all parts of a sharded prediction finished)."""
    for fold in inputs.folds:
        missing = missing_predictions(list(cases), fold_folder(inputs.predictions, fold), inputs.file_ending)
        if missing:
            raise FileNotFoundError(f"fold {fold} has no prediction for {len(missing)} case(s), e.g. {missing[:3]}; "
                                    f"run the prediction step (every -part_id) before selecting")


def run_selection(inputs: RoundInputs, rule: SelectionRule, fused_folder: Path,
                  postprocess: Callable[[sitk.Image], sitk.Image] | None = None,
                  progress: bool = True) -> dict[str, CaseScore]:
    """Score every candidate, write its fused (optionally post-processed) label to
    ``fused_folder``, and mark the selected cases."""
    candidates = inputs.candidates()
    if not candidates:
        raise ValueError(f"{inputs.raw}: no unlabeled target cases (\"labels\": \"none\" in a target domain) to "
                         f"pseudo-label")
    check_predictions(inputs, candidates)
    fused_folder.mkdir(parents=True, exist_ok=True)
    scores = {}
    for case in tqdm(candidates, desc="scoring folds", unit="case", disable=not progress):
        scores[case], fused = score_case(inputs, case)
        sitk.WriteImage(postprocess(fused) if postprocess else fused, str(fused_folder / f"{case}{inputs.file_ending}"),
                        useCompression=True)
    chosen = select_cases({c: s.score for c, s in scores.items()}, {c: s.domain for c, s in scores.items()}, rule)
    for case, score in scores.items():
        score.selected = chosen[case]
    return scores


def write_round_dataset(inputs: RoundInputs, scores: Mapping[str, CaseScore], fused_folder: Path, dataset_id: int,
                        name: str, round_number: int, raw_root: Path, overwrite: bool = False) -> Path:
    """The next round's raw dataset: the labeled cases of ``inputs`` (images, labels, domain table
    entries) and the selected candidates with their fused pseudo labels, plus the test set;
    written beside its final place and moved there when complete."""
    final = Path(raw_root) / dataset_folder_name(dataset_id, name)
    if final.resolve() == Path(inputs.raw).resolve():
        raise ValueError(f"the new dataset {final} would replace the one it is built from; choose another id")
    table_json = inputs.table.to_json()
    selected = [c for c, s in scores.items() if s.selected]
    ending = inputs.file_ending
    with atomic_folder(final, overwrite) as tmp:
        for folder in ("imagesTr", "labelsTr"):
            (tmp / folder).mkdir()
        for case in inputs.labeled() + selected:
            for path in inputs.channel_files(case):
                shutil.copy2(path, tmp / "imagesTr" / path.name)
        for case in inputs.labeled():
            shutil.copy2(Path(inputs.raw) / "labelsTr" / f"{case}{ending}", tmp / "labelsTr")
        for case in selected:
            shutil.copy2(Path(fused_folder) / f"{case}{ending}", tmp / "labelsTr")
        for folder in ("imagesTs", "labelsTs"):
            if (Path(inputs.raw) / folder).is_dir():
                shutil.copytree(Path(inputs.raw) / folder, tmp / folder)
        cases = {c: table_json["cases"][c] for c in inputs.labeled()}
        cases.update({c: {"domain": scores[c].domain, "labels": "pseudo", "round": round_number} for c in selected})
        table_json["cases"] = cases
        dataset_json = dict(inputs.dataset_json, name=name, numTraining=len(cases))
        dataset_json[TABLE_KEY] = table_json
        save_json(dataset_json, tmp / "dataset.json")
    return final


def report_json(scores: Mapping[str, CaseScore], rule: SelectionRule, round_number: int) -> dict:
    by_domain: dict[str, dict] = {}
    for s in scores.values():
        entry = by_domain.setdefault(s.domain, {"candidates": 0, "selected": 0})
        entry["candidates"] += 1
        entry["selected"] += int(s.selected)
    return {"round": round_number, "rule": rule.describe(), "per_domain": by_domain,
            "cases": {c: s.to_json() for c, s in sorted(scores.items())}}


def write_report(report: dict, path: Path) -> None:
    tmp = path.with_suffix(".json.incomplete")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)
