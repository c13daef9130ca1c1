"""A synthetic cross-modality abdominal phantom, written as an nnU-Net v2 raw UDA benchmark dataset.

The phantom lets every part of nnunet_uda (domain tables, harmonisation, adaptation losses,
pseudo-label rounds, evaluation) be exercised end to end in minutes, with a real and controllable
domain gap and known ground truth for every case, including the unlabeled target ones.

This module writes the dataset: every case's image, its label file (by what the domain table says
the case holds) and a preview. The true labels of the target training cases (and of cases with
pseudo-labeled classes) are always written to ``labelsTr_reference``. Every label written uses the
options' label map (:attr:`~.options.PhantomOptions.labels`: the kept organs renumbered 1..n), applied
to each case's true labels once, right after synthesis. The phantom itself is built in
:mod:`.anatomy` (label map and anatomy), :mod:`.acquisition` (domains, contrast and acquisition),
:mod:`.case` (one case), :mod:`.pseudo_labels` (initial pseudo labels) and :mod:`.options` (options,
case plan and dataset.json).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_uda.data.raw import atomic_folder, dataset_folder_name, datasets_using_id, raw_root, save_json
from nnunet_uda.synthetic.acquisition import DEFAULT_SHAPE, SOURCE_DOMAIN
from nnunet_uda.synthetic.anatomy import LABELS, ORGANS
from nnunet_uda.synthetic.case import PhantomCase, case_rng, synthesize_case
from nnunet_uda.synthetic.options import (FILE_ENDING, CasePlan, PhantomOptions, PhantomOptionsError, dataset_json,
                                          plan_cases)
from nnunet_uda.synthetic.pseudo_labels import PSEUDO_LABEL_PERTURBATIONS, perturb_labels


def keep_classes(label: np.ndarray, names: Iterable[str], labels: Mapping[str, int]) -> np.ndarray:
    """``label`` (values of the label map ``labels``) with every class not in ``names`` drawn as background."""
    return np.where(np.isin(label, [labels[n] for n in names]), label, 0).astype(np.uint8)


def training_label(case: PhantomCase, plan: CasePlan, options: PhantomOptions) -> np.ndarray:
    """The label file content of a training case, by what the domain table says it holds
    (``case.label`` already in the options' label map)."""
    if plan.labels == "none":
        return np.full_like(case.label, options.ignore_label)
    if plan.labels == "ground_truth" and not plan.pseudo:
        return keep_classes(case.label, options.annotated(plan.domain), options.labels)
    rng = case_rng(options.seed, plan.domain, plan.index, plan.split, stream=1)
    pseudo = perturb_labels(case.label, case.spacing, PSEUDO_LABEL_PERTURBATIONS[options.pseudo_labels], rng)
    if plan.labels == "pseudo":
        return pseudo
    manual = keep_classes(case.label, options.annotated(plan.domain), options.labels)
    return np.where(manual > 0, manual, keep_classes(pseudo, plan.pseudo, options.labels)).astype(np.uint8)


def write_volume(array: np.ndarray, path: Path, spacing: Sequence[float], origin: Sequence[float]) -> None:
    """Write a (z, y, x) array with SimpleITK: spacing and origin given in (z, y, x) order,
    identity direction."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in reversed(spacing)])
    image.SetOrigin([float(o) for o in reversed(origin)])
    image.SetDirection(np.eye(3).ravel().tolist())
    sitk.WriteImage(image, str(path), True)


def write_case(folder: Path, plan: CasePlan, options: PhantomOptions) -> PhantomCase:
    """Generate and write one case (image, label file, reference labels where needed); the case
    returned has its labels in the options' label map."""
    anatomy_of = SOURCE_DOMAIN if options.subject(plan) and plan.domain != SOURCE_DOMAIN else None
    case = synthesize_case(options.seed, plan.domain, plan.index, plan.split, options.shape, anatomy_of,
                           options.structures, options.variation)
    case = replace(case, label=options.label_lookup[case.label])
    images, labels = ("imagesTr", "labelsTr") if plan.split == "train" else ("imagesTs", "labelsTs")
    geometry = (case.spacing, case.origin)
    write_volume(case.image, folder / images / f"{plan.case_id}_0000{FILE_ENDING}", *geometry)
    label = training_label(case, plan, options) if plan.split == "train" else case.label
    write_volume(label, folder / labels / f"{plan.case_id}{FILE_ENDING}", *geometry)
    if plan.split == "train" and (plan.domain in options.targets or plan.pseudo):
        write_volume(case.label, folder / "labelsTr_reference" / f"{plan.case_id}{FILE_ENDING}", *geometry)
    return case


def write_preview(cases: Mapping[str, PhantomCase], path: Path, labels: Mapping[str, int] = LABELS) -> None:
    """A PNG with, per domain, a mid-axial and a mid-coronal slice with contours of the organs of the
    label map ``labels`` (that of the cases' labels), each organ in its own colour."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    palette = dict(zip(ORGANS, ("tab:red", "tab:blue", "tab:green", "tab:olive", "tab:orange", "tab:purple")))
    colors = {organ: color for organ, color in palette.items() if organ in labels}
    figure = Figure(figsize=(6.4, 3.0 * len(cases)), layout="constrained")
    axes = figure.subplots(len(cases), 2, squeeze=False)
    for row, (domain, case) in zip(axes, cases.items()):
        sz, sy, sx = case.spacing
        mid_z, mid_y = case.image.shape[0] // 2, case.image.shape[1] // 2
        views = (("axial", case.image[mid_z], case.label[mid_z], sy / sx),
                 ("coronal", case.image[:, mid_y], case.label[:, mid_y], sz / sx))
        for ax, (view, image, label, aspect) in zip(row, views):
            ax.imshow(image, cmap="gray", vmin=-1, vmax=1, aspect=aspect, interpolation="nearest")
            for organ, color in colors.items():
                mask = label == labels[organ]
                if mask.any():
                    ax.contour(mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=0.8)
            ax.set_title(f"{domain}, {view}", fontsize=9)
            ax.set_axis_off()
    figure.legend([Line2D([], [], color=c) for c in colors.values()], list(colors), loc="outside lower center",
                  ncol=3, fontsize=8)
    figure.savefig(path, dpi=100)


def generate_phantom_dataset(dataset_id: int, *, name: str = "UDAPhantom",
                             shape: Sequence[int] = DEFAULT_SHAPE, n_source: int = 16, n_target: int = 16,
                             n_test: int = 5, seed: int = 0, partial_labels: bool = False,
                             pseudo_labels: str | None = None, semi_supervised: float | None = None,
                             fully_labeled: bool = False, paired: bool = False,
                             organs: Sequence[str] = ORGANS, organ_scale: float = 1.0, variation: float = 1.0,
                             overwrite: bool = False,
                             output_root: str | Path | None = None, progress: bool = False) -> Path:
    """Write the phantom benchmark as ``<output_root>/DatasetXXX_<name>`` and return its path.

    ``shape``: CT grid (z, y, x) at 2 mm; ``n_source`` CT training cases; ``n_target`` training
    cases per target domain (T1, T2); ``n_test`` test cases per domain; ``seed``: everything is a
    function of it. ``partial_labels``: CT annotates all but the gallbladder, T1 training cases
    annotate only the gallbladder. ``pseudo_labels`` (``"reg"``/``"sreg"``): unlabeled training
    cases get registration-like initial pseudo labels instead of ignore-only ones; with
    ``partial_labels``, so do the unannotated classes of the partially labeled cases (manual
    labels win where both are drawn), as in AICL's setting.
    ``semi_supervised`` (fraction in (0, 1)): CT only, with round(fraction * n_source) labeled
    training cases. ``fully_labeled``: every training case carries its true labels (the images
    equal those of the dataset without it). ``paired``: target training case i shows the anatomy of
    CT training case i (the same subject in each modality, as AICL's registered modality pairs), and
    the domain table names each training case's ``subject``. ``organs``: the labeled organs (a
    non-empty subset of :data:`~.anatomy.ORGANS`, renumbered 1..n in that order, ignore n + 1); the
    others stay in the images but are background in every label file. ``organ_scale`` (0.5-2.0):
    every organ's size factor (the body and spine unchanged). ``variation`` (0-4): the case-to-case
    variation of anatomy and contrast as a multiple of the default (0: every case alike).
    ``output_root`` defaults to ``$nnUNet_raw``; the dataset appears only when complete, and an existing one is
    replaced only with ``overwrite``.
    Raises :class:`PhantomOptionsError` for invalid options, before anything is written.
    """
    options = PhantomOptions(dataset_id, name, tuple(shape), n_source, n_target, n_test, seed,
                             partial_labels, pseudo_labels, semi_supervised, fully_labeled, paired,
                             organs=organs, organ_scale=organ_scale, variation=variation)
    root = Path(output_root) if output_root is not None else raw_root()
    final = root / dataset_folder_name(dataset_id, name)
    _check_id_unused(root, dataset_id, final)
    plans = plan_cases(options)
    content = dataset_json(options, plans)
    with atomic_folder(final, overwrite=overwrite) as folder:
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs", "labelsTr_reference"):
            (folder / sub).mkdir()
        previews = {}
        for plan in tqdm(plans, desc="phantom cases", unit="case", disable=not progress):
            case = write_case(folder, plan, options)
            if plan.split == "test" and plan.domain not in previews:
                previews[plan.domain] = case
        save_json(content, folder / "dataset.json")
        write_preview(previews, folder / "preview.png", options.labels)
    return final


def _check_id_unused(root: Path, dataset_id: int, final: Path) -> None:
    """Refuse a dataset id already taken by a dataset of another name (nnU-Net needs unique ids)."""
    others = datasets_using_id(root, dataset_id, final)
    if others:
        raise PhantomOptionsError(f"dataset id {dataset_id} is already used by {', '.join(others)} "
                                  f"in {root}; choose another id")
