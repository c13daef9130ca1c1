"""Checks a raw dataset against nnunet_uda's conventions, then against nnU-Net's own.

Every problem is reported with the file or case it concerns and how to fix it. The plugin's
checks run first because their messages are more specific; nnU-Net's
``verify_dataset_integrity`` runs only once they pass.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_uda.data.raw import load_dataset_json
from nnunet_uda.domains import DomainTable, DomainTableError


class DatasetError(ValueError):
    """A raw dataset breaks a convention; the message lists every problem found."""


def _cases_in(folder: Path, ending: str, channel_suffix: bool) -> dict[str, list[Path]]:
    pattern = re.compile(r"^(.*)_(\d{4})" + re.escape(ending) + "$" if channel_suffix else
                         r"^(.*)" + re.escape(ending) + "$")
    out: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*" + ending)) if folder.is_dir() else []:
        m = pattern.match(path.name)
        if m:
            out.setdefault(m.group(1), []).append(path)
    return out


def _geometry(path: Path) -> tuple:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()


def _same_geometry(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and all(np.allclose(x, y, rtol=1e-4, atol=1e-4) for x, y in zip(a[1:], b[1:]))


def _check_pair(case: str, images: list[Path], label: Path, table: DomainTable, value_names: dict[int, str],
                ignore: int | None, training: bool) -> list[str]:
    problems = []
    label_geometry = _geometry(label)
    for image in images:
        if not _same_geometry(_geometry(image), label_geometry):
            size, spacing, origin, _ = _geometry(image)
            problems.append(f"{image.name} and {label.name}: image and label geometry differ (image size {size}, "
                            f"spacing {spacing}, origin {origin}; label size {label_geometry[0]}, spacing "
                            f"{label_geometry[1]}, origin {label_geometry[2]}); resample the label onto the image grid")
    values = np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(label))))
    unknown = [int(v) for v in values if int(v) not in value_names]
    if unknown:
        problems.append(f"{label.name}: label values {unknown} are not declared in dataset.json[\"labels\"] "
                        f"(declared: {sorted(value_names)}); fix the label file or declare the labels")
        return problems
    if not training:
        return problems
    entry = table.entry(case)
    if entry.labels == "none":
        if ignore is None or set(values.tolist()) != {ignore}:
            problems.append(f"{label.name}: case {case} is unlabeled (labels \"none\" in the domain table) but its "
                            f"label file holds {sorted(int(v) for v in values)}; an unlabeled case's label map must "
                            f"be entirely the ignore label"
                            + ("" if ignore is not None else " (declare one: \"ignore\": highest label + 1)"))
        return problems
    annotated = set(table.annotated_classes(case)) | {0} | ({ignore} if ignore is not None else set())
    stray = [int(v) for v in values if int(v) not in annotated]
    if stray:
        names = ", ".join(f"{v} ({value_names[v]})" for v in stray)
        problems.append(f"{label.name}: case {case} (domain {entry.domain}) contains {names}, which the domain "
                        f"table says is not annotated for this case; add it to the domain's \"annotated_labels\" "
                        f"or remove it from the label file")
    return problems


def find_problems(folder: Path) -> list[str]:
    """Every violation of nnunet_uda's conventions in the raw dataset ``folder``."""
    folder = Path(folder)
    dataset_json = load_dataset_json(folder)
    try:
        table = DomainTable.from_dataset_json(dataset_json, where=str(folder / "dataset.json"))
    except DomainTableError as e:
        return [str(e)]
    ending = dataset_json.get("file_ending", ".nii.gz")
    labels = dataset_json["labels"]
    ignore = labels.get("ignore")
    value_names = {int(v): k for k, v in labels.items()}
    problems = []
    if ignore is None and table.cases_with_labels("none"):
        problems.append(f"{folder / 'dataset.json'}: the domain table has unlabeled cases but \"labels\" declares no "
                        f"\"ignore\" label; add \"ignore\": {max(value_names) + 1}")

    for split, table_cases, training in (("Tr", table.cases, True), ("Ts", table.test_cases, False)):
        images = _cases_in(folder / f"images{split}", ending, channel_suffix=True)
        label_files = _cases_in(folder / f"labels{split}", ending, channel_suffix=False)
        for case in sorted(set(images) - set(table_cases)):
            section = "cases" if training else "test_cases"
            problems.append(f"images{split}/{images[case][0].name}: case {case} is not in the domain table; add it "
                            f"to \"uda\".\"{section}\" with its domain")
        if training:
            for case in sorted(set(table_cases) - set(images)):
                problems.append(f"domain table: case {case} has no image in imagesTr (expected "
                                f"imagesTr/{case}_0000{ending}); remove it from \"uda\".\"cases\" or add the image")
        for case in sorted(set(label_files) - set(images)):
            problems.append(f"labels{split}/{case}{ending} has no image in images{split}; remove it or add the image")
        pairs = [c for c in sorted(images) if c in table_cases]
        for case in pairs:
            if case not in label_files:
                if training:
                    problems.append(f"imagesTr/{images[case][0].name} has no label file labelsTr/{case}{ending}; "
                                    f"add one (an unlabeled case gets a label map that is entirely the ignore "
                                    f"label, and \"labels\": \"none\" in the domain table)")
        for case in tqdm([c for c in pairs if c in label_files], desc=f"checking labels{split}", leave=False):
            problems += _check_pair(case, images[case], label_files[case][0], table, value_names, ignore, training)
    return problems


def verify_dataset(folder: Path, num_processes: int = 2, nnunet_checks: bool = True) -> None:
    """Raise :class:`DatasetError` listing every problem; then run nnU-Net's own integrity check."""
    problems = find_problems(Path(folder))
    if problems:
        raise DatasetError(f"{folder} breaks nnunet_uda's dataset conventions:\n- " + "\n- ".join(problems))
    if nnunet_checks:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
        try:
            verify_dataset_integrity(str(folder), num_processes=num_processes)
        except (AssertionError, RuntimeError) as e:
            raise DatasetError(f"{folder} fails nnU-Net's integrity check: {e}") from e
