"""The FLARE preset of the evaluation (``evaluate_folder(..., preset="flare")``, ``-preset flare``).

FLARE 2024 Task 3 (unsupervised domain adaptation from CT to MRI) ranks 13 abdominal organs by DSC
and NSD (paper 002 in ../shared/papers, section 3.1, "Evaluation Measures"). The paper names the
measures only; the rules are those of the challenge's official evaluation script for Tasks 2 and 3,
https://github.com/JunMa11/FLARE/blob/main/FLARE24/T2andT3_FLARE24_DSC_NSD_Eval.py ("the FLARE24
script" below). FLARE22's and FLARE23's scripts in the same repository
(FLARE22/Evaluation/FLARE22_DSC_NSD_Eval.py, FLARE23/FLARE23_DSC_NSD_Eval.py) use the same organs,
tolerances and axial-range rule.

- **Organs** (label values of the FLARE datasets; the script scores label ``i`` as the ``i``-th
  entry of its tolerance table): 1 liver, 2 right kidney, 3 spleen, 4 pancreas, 5 aorta,
  6 inferior vena cava, 7 right adrenal gland, 8 left adrenal gland, 9 gallbladder, 10 esophagus,
  11 stomach, 12 duodenum, 13 left kidney.

Per organ and case, as the script computes it (``docs/evaluation.md`` has the test that compares the two):

- **Empty masks**, judged on the whole image: reference and prediction both empty gives DSC = NSD = 1;
  exactly one empty gives DSC = NSD = 0 (the script's first three branches). HD95 and ASSD (not FLARE
  measures) follow :mod:`~nnunet_uda.evaluation.metrics`: 0, or the image diagonal in mm.
- **Aorta, inferior vena cava and esophagus are scored on an axial slab of the reference**: abdominal
  scans cut these tubular organs at arbitrary heights. The script keeps the slices ``[z_lower:z_upper]``
  of both masks, ``z_lower`` and ``z_upper`` being the reference's lowest and highest slice with the organ
  (``find_lower_upper_zbound``). Python's exclusive stop drops the reference's highest slice, and so
  does this preset, so that the numbers are the official ones; the slab's cut faces count as surface. The script
  takes axis 2 of nibabel's (x, y, z) array, axis 0 of the (z, y, x) array SimpleITK and nnU-Net read.
- **DSC and NSD** (DeepMind's surfel-area NSD, as in :mod:`~nnunet_uda.evaluation.metrics`) on those
  masks, with the script's ``label_tolerance`` in mm: liver 5, right kidney 3, spleen 3, pancreas 5,
  aorta 2, inferior vena cava 2, adrenal glands 2, gallbladder 2, esophagus 3, stomach 5, duodenum 7,
  left kidney 3. They override ``dataset_json["uda"]["nsd_tolerance_mm"]``; ``tolerances_mm`` (``-tol``)
  still overrides them.
- **NSD = 0 where DSC < 0.2** ("don't compute NSD if DSC is too low"; FLARE23's threshold was 0.1,
  FLARE22 had none).
- **Rounding**: DSC and NSD of each case to 4 decimals, with numpy's rounding (``round`` of a numpy
  float). The FLARE23 summary's organ means are the means of those rounded values, rounded to 4
  decimals, and ``Organ_DSC`` / ``Organ_NSD`` the mean of the 13 rounded organ means, rounded again:
  :meth:`FlareRules.aggregate`, the ``average`` row of the report.

Where the script gives NaN, defined here: a reference tubular organ on a single slice leaves the
script an empty slab (DSC NaN from 0/0, NSD NaN); here the slab is that slice. The script's other
failures (a shape mismatch, a missing prediction) are the report's errors. Label values the
dataset does not declare are an error too, where the script would ignore them.

**Matching a dataset's labels**: by name, not by value. A dataset.json label matches a FLARE organ
when the names agree ignoring case, spaces, underscores and hyphens ("Right_Kidney" and
"rightkidney" are "right kidney"), or when it carries the script's short name (RK, LK, IVC, RAG,
LAG). Each of the 13 organs must be matched by exactly one label, and no other foreground label
may exist (the ignore label is allowed); a dataset numbering the organs differently is scored
correctly. Anything else is an :class:`~nnunet_uda.evaluation.report.EvaluationError` that names
the labels at fault.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from nnunet_uda.evaluation import EvaluationError

ORGANS = {"liver": 1, "right kidney": 2, "spleen": 3, "pancreas": 4, "aorta": 5, "inferior vena cava": 6,
          "right adrenal gland": 7, "left adrenal gland": 8, "gallbladder": 9, "esophagus": 10, "stomach": 11,
          "duodenum": 12, "left kidney": 13}  # FLARE's label values
TOLERANCES_MM = {"liver": 5.0, "right kidney": 3.0, "spleen": 3.0, "pancreas": 5.0, "aorta": 2.0,
                 "inferior vena cava": 2.0, "right adrenal gland": 2.0, "left adrenal gland": 2.0,
                 "gallbladder": 2.0, "esophagus": 3.0, "stomach": 5.0, "duodenum": 7.0, "left kidney": 3.0}
COLUMNS = {"liver": "Liver", "right kidney": "RK", "spleen": "Spleen", "pancreas": "Pancreas", "aorta": "Aorta",
           "inferior vena cava": "IVC", "right adrenal gland": "RAG", "left adrenal gland": "LAG",
           "gallbladder": "Gallbladder", "esophagus": "Esophagus", "stomach": "Stomach", "duodenum": "Duodenum",
           "left kidney": "LK"}  # the script's column names, in its order
SHORT_NAMES = {"rk": "right kidney", "lk": "left kidney", "ivc": "inferior vena cava",
               "rag": "right adrenal gland", "lag": "left adrenal gland"}
NAMES = {organ.replace(" ", ""): organ for organ in ORGANS} | SHORT_NAMES  # name key -> FLARE organ
AXIAL_RANGE_ORGANS = ("aorta", "inferior vena cava", "esophagus")
MIN_DICE_FOR_NSD = 0.2
AXIAL_AXIS = 0  # of SimpleITK's (z, y, x) arrays
ROUNDED_METRICS = ("dice", "nsd")
DECIMALS = 4


@dataclass(frozen=True)
class FlareRules:
    """FLARE's rules for one dataset, by its own organ names (picklable for the worker processes)."""

    tolerances_mm: dict[str, float]
    axial_range_organs: frozenset[str]
    columns: dict[str, str]  # dataset organ name -> the script's column name

    def restrict(self, name: str, reference: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A tubular organ's masks on the reference's axial slab (the masks are cropped to a box that holds
        both, the reference non-empty)."""
        if name not in self.axial_range_organs:
            return reference, prediction
        slab = axial_slab(reference)
        return reference[slab], prediction[slab]

    def adjust(self, name: str, metrics: dict[str, float]) -> dict[str, float]:
        """NSD 0 where DSC < 0.2; DSC and NSD rounded as the script rounds them (in place; returned)."""
        if metrics["dice"] < MIN_DICE_FOR_NSD:
            metrics["nsd"] = 0.0
        for metric in ROUNDED_METRICS:
            metrics[metric] = official_round(metrics[metric])
        return metrics

    @staticmethod
    def aggregate(metric: str, values: Sequence[float]) -> float:
        """The mean of a metric over cases or organs, rounded for DSC and NSD as the FLARE23 summary does."""
        mean = float(np.mean(values))
        return official_round(mean) if metric in ROUNDED_METRICS else mean

    def tables(self, summary: Mapping, file_ending: str) -> dict[str, str]:
        """``DSC_NSD.csv``: the script's per-case table (its columns, its order), to compare with its output."""
        organs = sorted(self.columns, key=lambda name: list(COLUMNS.values()).index(self.columns[name]))
        header = ["Name"] + [f"{self.columns[o]}_{m}" for m in ("DSC", "NSD") for o in organs]
        rows = [[case["case"] + file_ending] + [repr(case["metrics"][o][m]) for m in ROUNDED_METRICS for o in organs]
                for case in summary["cases"]]
        return {"DSC_NSD.csv": "\n".join(",".join(row) for row in [header, *rows]) + "\n"}


def flare_rules(organs: Mapping[str, int]) -> FlareRules:
    """The FLARE rules for a dataset's organs (name -> label value, as ``organ_labels`` gives them)."""
    flare_name = match_organs(organs)
    return FlareRules(tolerances_mm={name: TOLERANCES_MM[flare_name[name]] for name in organs},
                      axial_range_organs=frozenset(n for n in organs if flare_name[n] in AXIAL_RANGE_ORGANS),
                      columns={name: COLUMNS[flare_name[name]] for name in organs})


def match_organs(organs: Mapping[str, int]) -> dict[str, str]:
    """Each dataset organ name -> its FLARE organ; an EvaluationError naming every label that doesn't fit."""
    matched = {name: _flare_name(name) for name in organs}
    problems = []
    unknown = [f"\"{name}\" ({value})" for name, value in organs.items() if matched[name] is None]
    if unknown:
        problems.append(f"label(s) {', '.join(unknown)} are not FLARE organs")
    for flare in ORGANS:
        names = [name for name, match in matched.items() if match == flare]
        if len(names) > 1:
            problems.append(f"labels {_quoted(names)} all name the {flare}")
    missing = [flare for flare in ORGANS if flare not in matched.values()]
    if missing:
        problems.append(f"no label names the {', '.join(missing)}")
    if problems:
        expected = ", ".join(f"{label} {name}" for name, label in ORGANS.items())
        raise EvaluationError(f"the FLARE preset does not fit dataset.json[\"labels\"]: {'; '.join(problems)}. "
                              f"It scores exactly the 13 FLARE organs ({expected}), matched by name "
                              f"(case, spaces, underscores and hyphens ignored; RK, LK, IVC, RAG and LAG "
                              f"accepted); rename the labels in "
                              f"dataset.json to these names, or evaluate without the preset")
    return matched


def axial_slab(reference: np.ndarray) -> tuple[slice, ...]:
    """The script's slab ``[z_lower:z_upper]`` along :data:`AXIAL_AXIS` of a non-empty reference mask
    (its highest slice left out, as the script leaves it out); the one slice of a reference on one slice."""
    other_axes = tuple(axis for axis in range(reference.ndim) if axis != AXIAL_AXIS)
    labelled = np.flatnonzero(reference.any(axis=other_axes))
    lower, upper = labelled[0], max(labelled[-1], labelled[0] + 1)
    return (slice(None),) * AXIAL_AXIS + (slice(lower, upper),)


def official_round(value: float) -> float:
    """``round(x, 4)`` of a numpy float, as the script rounds (numpy's rounding, not Python's)."""
    return float(np.round(np.float64(value), DECIMALS))


def _flare_name(name: str) -> str | None:
    """The FLARE organ a dataset label name stands for (case, spaces, underscores, hyphens ignored), or None."""
    return NAMES.get("".join(ch for ch in name.lower() if ch not in " _-"))


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"\"{name}\"" for name in names)
