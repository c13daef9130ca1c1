"""Domain-aware intensity harmonisation, applied when a raw dataset is written.

nnU-Net picks one normalisation per input channel, and its CT scheme uses dataset-wide
foreground percentiles: a channel that holds CT in some cases and MRI in others cannot be served by
it. nnunet_uda therefore harmonises each image on its own, by its modality, before nnU-Net sees it,
as the FLARE 2024 Task 3 paper does (section 3.2):

- CT: clip to [-600, 600] HU and scale linearly to [-1, 1];
- MR (and any other modality): clip to the image's 1st and 99th intensity percentiles and scale
  that range to [-1, 1].

The rule needs nothing but the image and its modality, so test images are harmonised the same
way (``nnUNetv2_uda_harmonize``) before ``nnUNetv2_predict``. Domain-aware planning then sets the
channel's nnU-Net normalisation to per-image z-scoring (``ZScoreNormalization`` without a mask),
which is well defined for every domain after harmonisation.
"""
from __future__ import annotations

import numpy as np

CT_WINDOW = (-600.0, 600.0)
MR_PERCENTILES = (1.0, 99.0)


def harmonize(image: np.ndarray, modality: str) -> np.ndarray:
    """Clip and scale ``image`` to [-1, 1] by the rule of its ``modality``; returns float32."""
    image = np.asarray(image, dtype=np.float32)
    if modality.upper() == "CT":
        low, high = CT_WINDOW
    else:
        low, high = np.percentile(image, MR_PERCENTILES)
    if high <= low:
        return np.zeros_like(image)
    return (2.0 * (np.clip(image, low, high) - low) / (high - low) - 1.0).astype(np.float32)
