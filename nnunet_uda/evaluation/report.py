"""Evaluating a folder of predictions against a folder of reference labels, per domain.

:func:`evaluate_folder` computes :func:`nnunet_uda.evaluation.metrics.case_metrics` for every
reference case, groups the cases by the domain named in ``dataset.json["uda"]`` (cases outside the
domain table, or every case of a dataset without one, form the domain ``"all"``), averages the
metrics per domain and organ, and writes ``summary.json`` and ``summary.md``.

``summary.json``::

    {"cases": [{"case": "case_001", "domain": "T1",
                "metrics": {"liver": {"dice": .., "nsd": .., "hd95": .., "assd": ..}, ...}}, ...],
     "mean": {"T1": {"liver": {"dice": .., ...}, ..., "average": {"dice": .., ...}}, ...},
     "tolerances_mm": {"liver": 2.0, ...},
     "preset": null}

``mean[domain][organ]`` is the mean over the domain's cases; ``mean[domain]["average"]`` the mean
of those organ means. Domains appear in the order of the domain table, then ``"all"``.

A preset (``preset="flare"``: :mod:`nnunet_uda.evaluation.flare`) scores the cases by a
challenge's rules and tolerances, averages them as the challenge does and may add tables of its own
(FLARE: the official script's ``DSC_NSD.csv``); ``"preset"`` records which one was used.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_uda.evaluation import EvaluationError
from nnunet_uda.evaluation.flare import FlareRules, flare_rules
from nnunet_uda.evaluation.metrics import METRICS, case_metrics
from nnunet_uda.parallel import map_cases

DEFAULT_TOLERANCE_MM = 2.0
UNASSIGNED_DOMAIN = "all"
PRESETS = {"flare": flare_rules}  # name -> the rules for a dataset's organs
METRIC_COLUMNS = {"dice": "Dice", "nsd": "NSD", "hd95": "HD95 (mm)", "assd": "ASSD (mm)"}
DECIMALS = {"dice": 4, "nsd": 4, "hd95": 2, "assd": 2}


def evaluate_folder(reference_folder: str | os.PathLike, prediction_folder: str | os.PathLike,
                    dataset_json: Mapping, output_folder: str | os.PathLike | None = None,
                    tolerances_mm: Mapping[str, float] | None = None, num_processes: int = 2,
                    preset: str | None = None) -> dict:
    """Evaluate every reference label file against the prediction of the same name.

    Cases are the files in ``reference_folder`` ending in ``dataset_json["file_ending"]``. A
    reference without a prediction is an error (:class:`FileNotFoundError`); a prediction without a
    reference is skipped with a warning. NSD tolerances: 2 mm per organ, overridden by
    ``dataset_json["uda"]["nsd_tolerance_mm"]``, by the preset's, then by ``tolerances_mm``. With
    ``output_folder``, ``summary.json`` and ``summary.md`` are written there. ``num_processes``
    worker processes (spawned) evaluate the cases; 1 evaluates them in this process. ``preset``
    (one of :data:`PRESETS`, or None) applies a challenge's scoring rules, see :func:`preset_rules`.
    """
    reference_folder, prediction_folder = Path(reference_folder), Path(prediction_folder)
    file_ending = dataset_json["file_ending"]
    cases = _paired_cases(reference_folder, prediction_folder, file_ending)
    organs, ignore_label = organ_labels(dataset_json)
    rules = preset_rules(preset, organs)
    tolerances = resolve_tolerances(dataset_json, organs, tolerances_mm,
                                    None if rules is None else rules.tolerances_mm)
    declared = sorted({0, *organs.values(), *([] if ignore_label is None else [ignore_label])})
    jobs = [(case, str(reference_folder / (case + file_ending)), str(prediction_folder / (case + file_ending)),
             organs, tolerances, ignore_label, declared, rules) for case in cases]
    metrics = dict(zip(cases, map_cases(_evaluate_case, jobs, num_processes, "evaluating")))
    domains = {case: domain_of(dataset_json, case) for case in cases}
    mean = rules.aggregate if rules is not None else _mean
    summary = {"cases": [{"case": c, "domain": domains[c], "metrics": metrics[c]} for c in cases],
               "mean": _domain_means(metrics, domains, list(organs), _domain_order(dataset_json), mean),
               "tolerances_mm": tolerances, "preset": preset}
    if output_folder is not None:
        output_folder = Path(output_folder)
        output_folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(output_folder / "summary.json", json.dumps(summary, indent=2))
        _write_atomically(output_folder / "summary.md", format_markdown(summary))
        for name, text in ({} if rules is None else rules.tables(summary, file_ending)).items():
            _write_atomically(output_folder / name, text)
    return summary


def organ_labels(dataset_json: Mapping) -> tuple[dict[str, int], int | None]:
    """Organ names to label values (all labels but background and ignore), and the ignore label."""
    labels = dict(dataset_json["labels"])
    ignore_label = labels.pop("ignore", None)
    organs = {name: value for name, value in labels.items() if value != 0}
    if not organs:
        raise EvaluationError("dataset.json[\"labels\"] has no foreground label to evaluate")
    if "average" in organs:
        raise EvaluationError("a label named \"average\" would clash with the summary's average row; rename it")
    for name, value in organs.items():
        if not isinstance(value, int):
            raise EvaluationError(f"dataset.json label \"{name}\" has value {value!r}; evaluation supports "
                                  f"plain integer labels only (no regions)")
    return organs, ignore_label


def resolve_tolerances(dataset_json: Mapping, organs: Mapping[str, int],
                       tolerances_mm: Mapping[str, float] | None,
                       preset_tolerances_mm: Mapping[str, float] | None = None) -> dict[str, float]:
    """Each organ's NSD tolerance: default, then the dataset's ``nsd_tolerance_mm``, then the
    preset's, then ``tolerances_mm``."""
    tolerances = {name: DEFAULT_TOLERANCE_MM for name in organs}
    for source, given in (("dataset.json[\"uda\"][\"nsd_tolerance_mm\"]",
                           dataset_json.get("uda", {}).get("nsd_tolerance_mm", {})),
                          ("the preset's tolerances", preset_tolerances_mm or {}),
                          ("the tolerances given", tolerances_mm or {})):
        unknown = sorted(set(given) - set(organs))
        if unknown:
            raise EvaluationError(f"{source} name(s) {', '.join(unknown)}, which are not organs of the "
                                  f"dataset ({', '.join(organs)})")
        for name, value in given.items():
            if not np.isfinite(value) or value < 0:
                raise EvaluationError(f"{source}: the NSD tolerance of {name} must be a finite, "
                                      f"non-negative number of mm, got {value!r}")
            tolerances[name] = float(value)
    return tolerances


def preset_rules(preset: str | None, organs: Mapping[str, int]) -> FlareRules | None:
    """The scoring rules of ``preset`` for the dataset's organs, or None without a preset.

    The rules object has ``tolerances_mm`` (organ -> mm), ``restrict`` and ``adjust`` (per organ, used by
    :func:`~nnunet_uda.evaluation.metrics.case_metrics`), ``aggregate(metric, values)`` (the means of the
    summary) and ``tables(summary, file_ending)`` (extra files of the output folder, name -> text). ``"flare"``:
    :func:`nnunet_uda.evaluation.flare.flare_rules`, which raises :class:`EvaluationError` when the
    dataset's labels are not the 13 FLARE organs.
    """
    if preset is None:
        return None
    if preset not in PRESETS:
        raise EvaluationError(f"unknown evaluation preset {preset!r}; the presets are: {', '.join(PRESETS)}")
    return PRESETS[preset](organs)


def domain_of(dataset_json: Mapping, case: str) -> str:
    """The case's domain from the domain table (test cases first), else ``"all"``."""
    table = dataset_json.get("uda", {})
    for section in ("test_cases", "cases"):
        entry = table.get(section, {}).get(case)
        if entry is not None:
            return entry if isinstance(entry, str) else entry["domain"]
    return UNASSIGNED_DOMAIN


def format_markdown(summary: Mapping) -> str:
    """One Markdown table per domain: organs and their average as rows, the four metrics as columns."""
    counts: dict[str, int] = {}
    for case in summary["cases"]:
        counts[case["domain"]] = counts.get(case["domain"], 0) + 1
    tolerances = summary["tolerances_mm"]
    preamble = f"Scored with the {summary['preset']} preset.\n\n" if summary.get("preset") else ""
    uniform = len(set(tolerances.values())) == 1
    nsd_column = f"NSD@{_number(next(iter(tolerances.values())))} mm" if uniform else "NSD@tol"
    header = ["organ", "Dice", nsd_column, METRIC_COLUMNS["hd95"], METRIC_COLUMNS["assd"]]
    sections = []
    for domain, means in summary["mean"].items():
        lines = [f"### {domain} ({counts[domain]} case{'s' if counts[domain] != 1 else ''})", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for organ, values in means.items():
            label = organ if uniform or organ == "average" else f"{organ} (tol {_number(tolerances[organ])} mm)"
            cells = [f"{values[m]:.{DECIMALS[m]}f}" for m in METRICS]
            lines.append("| " + " | ".join([label] + cells) + " |")
        sections.append("\n".join(lines))
    return preamble + "\n\n".join(sections) + "\n"


def _paired_cases(reference_folder: Path, prediction_folder: Path, file_ending: str) -> list[str]:
    """Sorted case ids of the reference files; every one must have a prediction."""
    for name, folder in (("reference", reference_folder), ("prediction", prediction_folder)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{name} folder {folder} does not exist")
    references = _case_ids(reference_folder, file_ending)
    if not references:
        raise FileNotFoundError(f"no reference label files ending in {file_ending} in {reference_folder}")
    predictions = set(_case_ids(prediction_folder, file_ending))
    missing = [case + file_ending for case in references if case not in predictions]
    if missing:
        raise FileNotFoundError(f"{len(missing)} prediction(s) missing in {prediction_folder}: "
                                f"{', '.join(missing)}")
    extra = sorted(predictions - set(references))
    if extra:
        warnings.warn(f"{len(extra)} prediction(s) in {prediction_folder} have no reference in "
                      f"{reference_folder} and are not evaluated: {', '.join(extra)}", stacklevel=3)
    return references


def _case_ids(folder: Path, file_ending: str) -> list[str]:
    return sorted(p.name[:-len(file_ending)] for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(file_ending))


def _evaluate_case(job: tuple) -> dict[str, dict[str, float]]:
    """Worker: read one reference/prediction pair and compute its organ metrics (under the preset's rules)."""
    case, reference_file, prediction_file, organs, tolerances, ignore_label, declared, rules = job
    reference_image = sitk.ReadImage(reference_file)
    reference = sitk.GetArrayFromImage(reference_image)
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(prediction_file))
    if reference.shape != prediction.shape:
        raise EvaluationError(f"case {case}: the prediction {prediction_file} has shape {prediction.shape} "
                              f"but the reference {reference_file} has shape {reference.shape} (numpy z,y,x)")
    for what, path, array in (("prediction", prediction_file, prediction), ("reference", reference_file, reference)):
        undeclared = sorted(set(label_values(array)) - set(declared))
        if undeclared:
            raise EvaluationError(f"case {case}: the {what} {path} holds label value(s) "
                                  f"{', '.join(map(_number, undeclared))}, which dataset.json does not declare "
                                  f"(its labels: {', '.join(map(str, declared))}); evaluate it with the "
                                  f"dataset.json of the model that predicted it, or fix the file")
    # label maps stored as floats hold declared, hence integral, values by now
    reference, prediction = (a if a.dtype.kind in "iu" else a.astype(np.int32) for a in (reference, prediction))
    spacing = reference_image.GetSpacing()[::-1]  # SimpleITK gives x,y,z; numpy arrays are z,y,x
    return case_metrics(reference, prediction, spacing, organs, tolerances, ignore_label, rules)


def _domain_order(dataset_json: Mapping) -> list[str]:
    return list(dataset_json.get("uda", {}).get("domains", {})) + [UNASSIGNED_DOMAIN]


def label_values(labels: np.ndarray) -> np.ndarray:
    """The distinct values of a label map (one counting pass for non-negative integers)."""
    if labels.dtype.kind in "ub" or (labels.dtype.kind == "i" and labels.size and labels.min() >= 0):
        return np.flatnonzero(np.bincount(labels.ravel()))
    return np.unique(labels)


def _mean(metric: str, values: Sequence[float]) -> float:
    return float(np.mean(values))


def _domain_means(metrics: Mapping[str, Mapping], domains: Mapping[str, str], organs: list[str],
                  order: list[str], mean: Callable[[str, Sequence[float]], float]) -> dict[str, dict]:
    """Per domain: each organ's ``mean(metric, values)`` over the domain's cases, and the same over organs."""
    present = set(domains.values())
    ordered = [d for d in order if d in present] + sorted(present - set(order))
    means = {}
    for domain in ordered:
        cases = [c for c in metrics if domains[c] == domain]
        per_organ = {organ: {m: mean(m, [metrics[c][organ][m] for c in cases]) for m in METRICS}
                     for organ in organs}
        per_organ["average"] = {m: mean(m, [per_organ[o][m] for o in organs]) for m in METRICS}
        means[domain] = per_organ
    return means


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _number(value: float) -> str:
    """A tolerance without needless decimals: 2.0 -> '2', 1.5 -> '1.5'."""
    return f"{value:g}"
