"""Scoring predictions against reference labels: metrics (:mod:`.metrics`, :mod:`.surfels`), folder reports
(:mod:`.report`) and challenge presets (:mod:`.flare`). See ``docs/evaluation.md``."""


class EvaluationError(ValueError):
    """The inputs of an evaluation are inconsistent; the message names the case or setting."""
