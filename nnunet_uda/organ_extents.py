"""Data-driven PGPS patch size (AICL section 3.2) from the organ extents of the training labels.

"For each class, we compute the bounding-box extents of its ground-truth masks after downsampling
to the latent feature resolution and summarize the extents across the training set using median and
percentiles." Here: every preprocessed training case's hand-drawn classes (pseudo-labeled ones are
left out), bounding boxes measured in preprocessed voxels and divided by the cumulative stride of
the encoder stage used for contrast (:func:`contrast_stage`). The patch size ps is, per axis, the
median over organs of each organ's median extent, rounded up to an odd size (ps = 2r + 1) and
capped by the feature map, so a cuboid centred on a typical organ reaches its boundary ("cover
boundary regions for each organ while limiting background inclusion"); organ-adaptive sizes (the
paper's suggested improvement) use each organ's own median extent. In nnU-Net's ``2d`` configuration
the network sees axial slices, so the extents are those of each organ's mask in each slice (y, x), and
the sizes are squares. The statistics, the choice and a
box plot (the paper's Fig. 6 A-C) are written by the planning command; the result lives in
``plans["uda"]["pgps"][configuration]``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

#: resolution of the contrast features relative to the input (AICL: F_m at H/4 x W/4 x D/4)
CONTRAST_STRIDE = 4
PERCENTILES = (10, 25, 50, 75, 90)
#: PGPS cuboid size where nothing was planned: the paper's choice for its orbital dataset
DEFAULT_PATCH_SIZE = (7, 7, 7)


def planned_pgps(plans: Mapping, configuration: str) -> dict | None:
    """What the planning command stored for ``configuration`` (None if nothing)."""
    return plans.get("uda", {}).get("pgps", {}).get(configuration)


def pgps_patch_size(plans: Mapping, configuration: str, dims: int = 3) -> tuple[int, ...]:
    """The planned common PGPS patch size, else :data:`DEFAULT_PATCH_SIZE` in ``dims`` axes."""
    planned = planned_pgps(plans, configuration)
    return tuple(planned["patch_size"]) if planned else DEFAULT_PATCH_SIZE[:dims]


def contrast_stage(strides: Sequence[Sequence[int]], contrast_stride: int = CONTRAST_STRIDE) -> int:
    """Index of the first encoder stage whose cumulative stride reaches ``contrast_stride`` along
    its most downsampled axis (stage 2 of nnU-Net's usual [1, 2, 2, ...] strides); the last stage
    if none does."""
    cumulative = np.cumprod(np.asarray(strides, dtype=int), axis=0)
    for stage, stride in enumerate(cumulative):
        if stride.max() >= contrast_stride:
            return stage
    return len(cumulative) - 1


def cumulative_stride(strides: Sequence[Sequence[int]], stage: int) -> tuple[int, ...]:
    return tuple(int(s) for s in np.prod(np.asarray(strides[:stage + 1], dtype=int), axis=0))


def bounding_box_extents(seg: np.ndarray, classes: Iterable[int]) -> dict[int, np.ndarray]:
    """Per class present in ``seg`` (z, y, x): its bounding-box extent in voxels (3,)."""
    out = {}
    for cls in classes:
        where = np.argwhere(seg == cls)
        if len(where):
            out[cls] = where.max(0) - where.min(0) + 1
    return out


def slice_extents(seg: np.ndarray, classes: Iterable[int]) -> dict[int, np.ndarray]:
    """Per class present in ``seg`` (z, y, x): its bounding-box extent (y, x) in every axial slice that
    holds it, (slices, 2)."""
    out = {}
    for cls in classes:
        mask = seg == cls
        slices = np.flatnonzero(mask.any((1, 2)))
        if len(slices):
            rows, cols = mask[slices].any(2), mask[slices].any(1)  # (slices, y), (slices, x)
            out[cls] = np.stack([_span(rows), _span(cols)], 1)
    return out


def _span(occupied: np.ndarray) -> np.ndarray:
    """Per row of a (n, length) bool array with at least one True: last - first True + 1."""
    length = occupied.shape[1]
    return length - occupied[:, ::-1].argmax(1) - occupied.argmax(1)


def covering_odd(value: float, limit: int) -> int:
    """The smallest odd integer >= ``value`` (a cuboid reaching the organ's boundary), at least 1
    and at most the largest odd <= ``limit``."""
    odd = 2 * int(np.ceil((value - 1) / 2)) + 1
    top = limit if limit % 2 else limit - 1
    return int(min(max(odd, 1), top))


def summarize(extents: Mapping[str, np.ndarray]) -> dict:
    """Per organ: the number of masks and each percentile of ``PERCENTILES`` per axis."""
    return {organ: {"n": int(len(values)),
                    **{f"p{q}": np.percentile(values, q, axis=0).round(2).tolist() for q in PERCENTILES}}
            for organ, values in extents.items() if len(values)}


def choose_patch_sizes(summary: Mapping[str, Mapping], feature_shape: Sequence[int]) -> tuple[list[int], dict]:
    """(common ps, per-organ ps) at the feature resolution, from the medians of ``summary``."""
    if not summary:
        raise ValueError("no hand-drawn organ masks in the training cases; PGPS patch sizes cannot be derived")
    medians = np.array([s["p50"] for s in summary.values()])
    common = [covering_odd(v, n) for v, n in zip(np.median(medians, axis=0), feature_shape)]
    per_organ = {organ: [covering_odd(v, n) for v, n in zip(s["p50"], feature_shape)] for organ, s in summary.items()}
    return common, per_organ


def pgps_statistics(preprocessed_folder: Path, plans: Mapping, configuration: str, table,
                    progress: bool = True) -> dict:
    """Organ extents at the contrast resolution for ``configuration`` and the patch sizes from them."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    config = plans["configurations"][configuration]
    strides = config["architecture"]["arch_kwargs"]["strides"]
    stage = contrast_stage(strides)
    stride = np.array(cumulative_stride(strides, stage))
    feature_shape = [int(p // s) for p, s in zip(config["patch_size"], stride)]
    folder = Path(preprocessed_folder) / config["data_identifier"]
    cases = [c for c in table.cases if table.ground_truth_labels(c)]
    dataset = infer_dataset_class(str(folder))(str(folder), cases)
    names = {value: name for name, value in table.label_names.items()}
    extents: dict[str, list] = {name: [] for name in table.label_names}
    measure = slice_extents if len(stride) == 2 else bounding_box_extents
    for case in tqdm(cases, desc=f"organ extents ({configuration})", disable=not progress):
        seg = dataset.load_case(case)[1][0]
        for cls, extent in measure(seg, table.classes_of(table.ground_truth_labels(case))).items():
            extents[names[cls]].extend(np.atleast_2d(extent) / stride)
    summary = summarize({k: np.array(v) for k, v in extents.items()})
    common, per_organ = choose_patch_sizes(summary, feature_shape)
    return {"stage": stage, "stride": stride.tolist(), "feature_shape": feature_shape, "extents": summary,
            "patch_size": common, "organ_patch_sizes": per_organ}


def plot_extents(statistics: Mapping, path: Path, title: str) -> None:
    """Box plots of organ extents per axis at the feature resolution (as the paper's Fig. 6 A-C),
    with the chosen common patch size as a dashed line."""
    from matplotlib.figure import Figure

    axes = ("H (z)", "W (y)", "D (x)")[-len(statistics["patch_size"]):]
    figure = Figure(figsize=(4 * len(axes), 3.5))
    for axis, name in enumerate(axes):
        ax = figure.add_subplot(1, len(axes), axis + 1)
        boxes = [{"med": s["p50"][axis], "q1": s["p25"][axis], "q3": s["p75"][axis], "whislo": s["p10"][axis],
                  "whishi": s["p90"][axis], "label": organ} for organ, s in statistics["extents"].items()]
        ax.bxp(boxes, showfliers=False)
        ax.axhline(statistics["patch_size"][axis], ls="--", c="k", lw=1, label="ps")
        ax.set_title(f"{name} extent (feature voxels)", fontsize=9)
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
        if axis == 0:
            ax.legend(fontsize=7)
    figure.suptitle(f"{title}: organ bounding boxes at the contrast resolution (stride {statistics['stride']}); "
                    f"boxes p25-p75, whiskers p10-p90", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
