"""Choosing the cases of the next round: the best-scored cases within each target modality.

The paper keeps the top 50 cases per MRI modality by consistency (section 2.3); a round can also
keep a fraction of each modality's cases, or every case scoring at least a threshold.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class SelectionRule:
    """Exactly one of: ``top`` cases per modality, a ``fraction`` of each modality's cases (rounded
    up), or every case with score at least ``threshold``."""
    top: int | None = None
    fraction: float | None = None
    threshold: float | None = None

    def __post_init__(self):
        given = [name for name in ("top", "fraction", "threshold") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one selection rule (top, fraction or threshold), got {given or 'none'}")
        if self.top is not None and self.top < 1:
            raise ValueError(f"top must be at least 1, got {self.top}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must lie in (0, 1], got {self.fraction}")

    def describe(self) -> str:
        if self.top is not None:
            return f"top {self.top} per modality"
        if self.fraction is not None:
            return f"best {self.fraction:.0%} per modality"
        return f"score >= {self.threshold}"


def select_cases(scores: Mapping[str, float], modality: Mapping[str, str], rule: SelectionRule) -> dict[str, bool]:
    """Whether each case of ``scores`` is selected; cases rank within their ``modality`` by score
    (higher first, ties by case id)."""
    missing = sorted(set(scores) - set(modality))
    if missing:
        raise ValueError(f"cases without a modality in the domain table: {missing[:5]}")
    groups: dict[str, list[str]] = defaultdict(list)
    for case in scores:
        groups[modality[case]].append(case)
    selected = {}
    for cases in groups.values():
        ranked = sorted(cases, key=lambda c: (-scores[c], c))
        if rule.threshold is not None:
            keep = {c for c in ranked if scores[c] >= rule.threshold}
        else:
            count = rule.top if rule.top is not None else math.ceil(rule.fraction * len(ranked))
            keep = set(ranked[:count])
        selected.update({c: c in keep for c in cases})
    return selected
