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
- **NSD tolerances** in mm (the script's ``label_tolerance``): liver 5, right kidney 3, spleen 3,
  pancreas 5, aorta 2, inferior vena cava 2, adrenal glands 2, gallbladder 2, esophagus 3,
  stomach 5, duodenum 7, left kidney 3. They override ``dataset_json["uda"]["nsd_tolerance_mm"]``;
  ``tolerances_mm`` (``-tol``) still overrides them.
- **Empty masks**: reference and prediction both empty gives DSC = NSD = 1; exactly one empty gives
  DSC = NSD = 0 (the script's first three branches). These are already the conventions of
  :mod:`nnunet_uda.evaluation.metrics`, which also sets HD95 and ASSD (not FLARE measures): 0 when
  both are empty, the image diagonal in mm when exactly one is.
- **NSD = 0 where DSC < 0.2** (the FLARE24 script: "don't compute NSD if DSC is too low";
  FLARE23's threshold was 0.1, FLARE22 had none). HD95 and ASSD keep their values.
- **Aorta, inferior vena cava and esophagus are scored only within the axial range of the
  reference**: abdominal scans cut these tubular organs at arbitrary heights, so prediction voxels
  above the reference's highest or below its lowest slice of the organ do not count (the script's
  ``find_lower_upper_zbound``). The script takes the range along axis 2 of nibabel's (x, y, z)
  array; :func:`~nnunet_uda.evaluation.report.evaluate_folder` reads SimpleITK's (z, y, x) array, as
  nnU-Net's SimpleITK reader does, so here it is axis 0: the same voxel axis of the file. Every
  slice between the lowest and the highest labelled one is in the range, labelled or not.

Differences from the script's numbers, on purpose:

- The script slices ``[z_lower:z_upper]``, which leaves out the reference's highest slice
  (Python's exclusive stop) and leaves nothing to score when the reference lies on a single slice.
  Here the range includes both end slices, as the rule intends.
- NSD counts surface voxels (the MONAI convention of :mod:`~nnunet_uda.evaluation.metrics`); the
  script weights surface elements by their area (DeepMind's surface-distance code), so NSD can
  differ slightly. DSC is the same, but for that highest slice of the three tubular organs.

The range rule clears the prediction outside the range on the whole image, which gives the same
surfaces and distances as cropping both masks to the range (the reference is empty outside it, and
the cropped border counts as background) and keeps the whole image's diagonal as the worst-case
HD95/ASSD.

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

from nnunet_uda.evaluation.report import EvaluationError

ORGANS = {"liver": 1, "right kidney": 2, "spleen": 3, "pancreas": 4, "aorta": 5, "inferior vena cava": 6,
          "right adrenal gland": 7, "left adrenal gland": 8, "gallbladder": 9, "esophagus": 10, "stomach": 11,
          "duodenum": 12, "left kidney": 13}  # FLARE's label values
TOLERANCES_MM = {"liver": 5.0, "right kidney": 3.0, "spleen": 3.0, "pancreas": 5.0, "aorta": 2.0,
                 "inferior vena cava": 2.0, "right adrenal gland": 2.0, "left adrenal gland": 2.0,
                 "gallbladder": 2.0, "esophagus": 3.0, "stomach": 5.0, "duodenum": 7.0, "left kidney": 3.0}
SHORT_NAMES = {"rk": "right kidney", "lk": "left kidney", "ivc": "inferior vena cava",
               "rag": "right adrenal gland", "lag": "left adrenal gland"}  # the FLARE24 script's column names
NAMES = {organ.replace(" ", ""): organ for organ in ORGANS} | SHORT_NAMES  # name key -> FLARE organ
AXIAL_RANGE_ORGANS = ("aorta", "inferior vena cava", "esophagus")
MIN_DICE_FOR_NSD = 0.2
AXIAL_AXIS = 0  # of SimpleITK's (z, y, x) arrays


@dataclass(frozen=True)
class FlareRules:
    """FLARE's rules for one dataset, by its own organ names (picklable for the worker processes)."""

    tolerances_mm: dict[str, float]
    axial_range_organs: frozenset[str]

    def restrict(self, name: str, prediction: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """The tubular organs' prediction within the reference's axial range (in place)."""
        return clear_outside_axial_range(prediction, reference) if name in self.axial_range_organs else prediction

    def adjust(self, name: str, metrics: dict[str, float]) -> dict[str, float]:
        """NSD 0 where DSC < 0.2."""
        return zero_nsd_below_min_dice(metrics)


def flare_rules(organs: Mapping[str, int]) -> FlareRules:
    """The FLARE rules for a dataset's organs (name -> label value, as ``organ_labels`` gives them)."""
    flare_name = match_organs(organs)
    return FlareRules(tolerances_mm={name: TOLERANCES_MM[flare_name[name]] for name in organs},
                      axial_range_organs=frozenset(n for n in organs if flare_name[n] in AXIAL_RANGE_ORGANS))


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


def clear_outside_axial_range(prediction: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Clear ``prediction`` (in place; returned) on the slices below and above ``reference``'s organ.

    Slices are taken along :data:`AXIAL_AXIS`; a reference without the organ leaves the prediction
    as it is.
    """
    other_axes = tuple(axis for axis in range(reference.ndim) if axis != AXIAL_AXIS)
    labelled = np.flatnonzero(reference.any(axis=other_axes))
    if labelled.size:
        slices = np.moveaxis(prediction, AXIAL_AXIS, 0)  # a view: writing to it clears ``prediction``
        slices[:labelled[0]] = False
        slices[labelled[-1] + 1:] = False
    return prediction


def zero_nsd_below_min_dice(metrics: dict[str, float]) -> dict[str, float]:
    """Set NSD to 0 (in place; returned) where DSC < :data:`MIN_DICE_FOR_NSD`, as FLARE24 does."""
    if metrics["dice"] < MIN_DICE_FOR_NSD:
        metrics["nsd"] = 0.0
    return metrics


def _flare_name(name: str) -> str | None:
    """The FLARE organ a dataset label name stands for (case, spaces, underscores, hyphens ignored), or None."""
    return NAMES.get("".join(ch for ch in name.lower() if ch not in " _-"))


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"\"{name}\"" for name in names)
