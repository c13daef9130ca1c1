"""The PNGs of a pseudo-label round: score distributions, and selected and rejected cases."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import SimpleITK as sitk

from nnunet_uda.figures import show_labels
from nnunet_uda.pseudolabels.rounds import CaseScore


def plot_scores(scores: Mapping[str, CaseScore], path: Path) -> None:
    """One panel per target modality: each organ's consistency (eq. 8) over the candidates, selected
    cases in colour, rejected in grey, and the case scores in the last column."""
    from matplotlib.figure import Figure

    domains = sorted({s.domain for s in scores.values()})
    organs = list(next(iter(scores.values())).organs)
    figure = Figure(figsize=(1.0 + 0.7 * (len(organs) + 1), 3.2 * len(domains)), layout="constrained")
    axes = np.atleast_1d(figure.subplots(len(domains), 1, squeeze=False)[:, 0])
    rng = np.random.default_rng(0)
    for ax, domain in zip(axes, domains):
        cases = [s for s in scores.values() if s.domain == domain]
        for column, values in enumerate([[s.organs[o] for s in cases] for o in organs] + [[s.score for s in cases]]):
            x = column + rng.uniform(-0.18, 0.18, len(cases))
            selected = np.array([s.selected for s in cases])
            values = np.asarray(values)
            ax.scatter(x[~selected], values[~selected], s=10, color="0.6", label="rejected" if column == 0 else None)
            ax.scatter(x[selected], values[selected], s=12, color="tab:blue", label="selected" if column == 0 else None)
        ax.set_xticks(range(len(organs) + 1), organs + ["case score"], rotation=30, ha="right")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("fold consistency (Dice)")
        ax.set_title(f"{domain}: {sum(s.selected for s in cases)} of {len(cases)} cases selected")
        ax.legend(loc="lower left", fontsize=7)
    figure.savefig(path, dpi=110)


def plot_examples(scores: Mapping[str, CaseScore], image_of: Callable[[str], Path], label_of: Callable[[str], Path],
                  path: Path, per_group: int = 2) -> None:
    """The middle axial slice of the best selected and the worst rejected cases of each modality,
    with the fused pseudo label overlaid."""
    from matplotlib.figure import Figure

    rows = []
    for domain in sorted({s.domain for s in scores.values()}):
        ranked = sorted((s for s in scores.values() if s.domain == domain), key=lambda s: -s.score)
        rows += [s for s in ranked if s.selected][:per_group] + [s for s in ranked if not s.selected][-per_group:]
    if not rows:
        return
    columns = min(4, len(rows))
    n_rows = -(-len(rows) // columns)
    figure = Figure(figsize=(2.6 * columns, 2.8 * n_rows), layout="constrained")
    axes = figure.subplots(n_rows, columns, squeeze=False).ravel()
    for ax, score in zip(axes, rows):
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(image_of(score.case))))
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(label_of(score.case))))
        z = image.shape[0] // 2
        show_labels(ax, image[z], labels[z],
                    f"{score.case}\n{'selected' if score.selected else 'rejected'}, score {score.score:.2f}")
    for ax in axes:
        ax.set_axis_off()
    figure.savefig(path, dpi=110)
