"""The FLARE preset of the evaluation (``evaluate_folder(..., preset="flare")``, ``-preset flare``).

FLARE 2024 Task 3 ranks 13 abdominal organs by DSC and NSD (paper 002, section 3.1). The preset computes
what the official script computes, case by case:
https://github.com/JunMa11/FLARE/blob/main/FLARE24/T2andT3_FLARE24_DSC_NSD_Eval.py ("the script").
``docs/evaluation.md`` describes the rules and the test that compares the preset with a transcription of
the script. Per organ and case:

- the organs are matched to the dataset's labels by name, not value (case, spaces, underscores and hyphens
  ignored; the script's RK, LK, IVC, RAG, LAG accepted); each of the 13 by exactly one label, no other
  foreground label, else an :class:`~nnunet_uda.evaluation.EvaluationError` naming the labels at fault;
- empty masks, judged on the whole image: both empty gives DSC = NSD = 1, one empty 0 and 0;
- aorta, inferior vena cava and esophagus on the reference's axial slab ``[z_lower:z_upper]`` as the script
  slices it: its highest labelled slice left out (Python's exclusive stop), the cut faces surface. The
  script's axis 2 of nibabel's (x, y, z) array is axis 0 of SimpleITK's (z, y, x) array;
- DSC and DeepMind's surfel-area NSD (:mod:`~nnunet_uda.evaluation.metrics`) with the script's tolerances
  (:data:`TOLERANCES_MM`, overriding the dataset's ``nsd_tolerance_mm``; ``-tol`` overrides them);
- NSD 0 where DSC < 0.2 (FLARE23's threshold was 0.1, FLARE22 had none);
- DSC and NSD rounded to 4 decimals with numpy's rounding, as ``round`` of a numpy float; organ means and
  ``Organ_DSC``/``Organ_NSD`` as the FLARE23 summary averages and rounds them (:meth:`FlareRules.aggregate`).

Where the script gives NaN, defined here: a tubular organ whose reference lies on one slice leaves the
script an empty slab (0/0); the preset scores that slice.
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
# name key (lower case, no spaces) -> FLARE organ: the organ's own name or the script's column (RK, IVC, ...)
NAMES = {key.lower().replace(" ", ""): organ for organ, column in COLUMNS.items() for key in (organ, column)}
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
