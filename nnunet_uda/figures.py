"""Drawing label maps over images, as every PNG of the plugin that shows segmentations does."""
from __future__ import annotations

import numpy as np

LABEL_COLORMAP = "tab10"  # label value v is the colormap's colour v (values up to 9)


def show_labels(ax, image: np.ndarray, labels: np.ndarray | None, title: str = "") -> None:
    """A 2D ``image`` in grey with ``labels`` (background 0 transparent) over it, without axes."""
    ax.imshow(image, cmap="gray")
    if labels is not None:
        ax.imshow(np.ma.masked_equal(labels, 0), cmap=LABEL_COLORMAP, vmin=0, vmax=9, alpha=0.45,
                  interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()
