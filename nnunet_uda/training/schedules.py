"""Loss-weight schedules of the semi-supervised trainers."""
from __future__ import annotations

import math


def sigmoid_rampup(t: float, length: float) -> float:
    """exp(-5 (1 - t / length)^2), t clipped to [0, length]; 1 when ``length`` is 0.

    The ramp-up of Laine and Aila (ICLR 2017) as UA-MT [DVCL ref. 50] uses it for consistency weights; DVCL's
    lambda_u (eq. 3) and DACL's Gaussian warm-up of lambda_CL (its eq. 1) are ``weight * sigmoid_rampup``.
    """
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(t, 0.0), length) / length
    return math.exp(-5.0 * phase * phase)
