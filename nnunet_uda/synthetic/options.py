"""Options of the phantom generator, the plan of the cases they give, and the dataset.json describing them.

Variants
--------
Besides the plain UDA benchmark (labelled CT, ignore-only target label files), the generator
writes AICL-style partial labels (CT without gallbladder, T1 with the gallbladder only),
registration-like initial pseudo labels (``reg``, ``sreg``), a semi-supervised single-domain
variant and the fully labelled twin (same images, true target labels) for the supervised ceiling.

Organs
------
``organs`` labels a subset of the six organs, renumbered 1..n in :data:`~.anatomy.ORGANS` order
(ignore n + 1; :attr:`PhantomOptions.labels`); the others are still painted (their tissue stays in
the images) but are background in every label file. ``organ_scale`` enlarges or shrinks every organ
(:func:`~.anatomy.scaled_anatomy`), e.g. for a short CPU demo; ``variation`` multiplies the case-to-case
variation of anatomy and contrast (:func:`~.anatomy.sample_anatomy`): above 1 a dataset that a few labeled
cases no longer cover, as the semi-supervised benchmark needs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from nnunet_uda.domains import DomainTable
from nnunet_uda.synthetic.acquisition import (DEFAULT_SHAPE, DOMAIN_MODALITIES, SOURCE_DOMAIN, TARGET_DOMAINS,
                                              acquisition_grid)
from nnunet_uda.synthetic.anatomy import (LABELS, ORGAN_SCALE_LIMITS, ORGANS, VARIATION_LIMITS, Structure,
                                          scaled_anatomy)
from nnunet_uda.synthetic.pseudo_labels import PSEUDO_LABEL_PERTURBATIONS

PARTIAL_ANNOTATIONS: dict[str, tuple[str, ...]] = {
    "CT": tuple(o for o in ORGANS if o != "gallbladder"),
    "T1": ("gallbladder",),
    "T2": (),
}
"""``partial_labels``: classes annotated per domain (as in AICL; T2 stays unlabeled), of those
among the options' ``organs``."""

SHAPE_LIMITS = (20, 256)
"""Smallest and largest allowed grid size per axis (below 20 the small organs may vanish)."""

FILE_ENDING = ".nii.gz"


class PhantomOptionsError(ValueError):
    """Invalid generator options; the message says which and what is allowed."""


@dataclass(frozen=True)
class PhantomOptions:
    """Validated options of :func:`~nnunet_uda.synthetic.dataset.generate_phantom_dataset` (see there)."""
    dataset_id: int
    name: str = "UDAPhantom"
    shape: tuple[int, int, int] = DEFAULT_SHAPE
    n_source: int = 16
    n_target: int = 16
    n_test: int = 5
    seed: int = 0
    partial_labels: bool = False
    pseudo_labels: str | None = None
    semi_supervised: float | None = None
    fully_labeled: bool = False
    paired: bool = False
    organs: tuple[str, ...] = ORGANS
    organ_scale: float = 1.0
    variation: float = 1.0

    def __post_init__(self):
        organs = (self.organs,) if isinstance(self.organs, str) else self.organs
        try:
            object.__setattr__(self, "organs", tuple(organs))
        except TypeError:
            pass
        problem = next(iter(self._problems()), None)
        if problem is not None:
            raise PhantomOptionsError(problem)
        object.__setattr__(self, "organs", tuple(o for o in ORGANS if o in self.organs))
        object.__setattr__(self, "organ_scale", float(self.organ_scale))
        object.__setattr__(self, "variation", float(self.variation))

    def _problems(self) -> Iterable[str]:
        """Yield a message for each invalid option (the first one is raised)."""
        if not _is_int(self.dataset_id) or not 1 <= self.dataset_id <= 999:
            yield f"dataset id must be an integer from 1 to 999, got {self.dataset_id!r}"
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(self.name)):
            yield f"name must be letters, digits, '_' or '-' only, got {self.name!r}"
        low, high = SHAPE_LIMITS
        if len(self.shape) != 3 or not all(_is_int(s) and low <= s <= high for s in self.shape):
            yield f"shape must be three integers Z Y X, each from {low} to {high}, got {tuple(self.shape)}"
        for key, minimum in (("n_source", 1), ("n_target", 1), ("n_test", 1), ("seed", 0)):
            value = getattr(self, key)
            if not _is_int(value) or value < minimum:
                yield f"{key} must be an integer >= {minimum}, got {value!r}"
        if self.pseudo_labels not in (None, *PSEUDO_LABEL_PERTURBATIONS):
            yield (f"pseudo_labels must be one of {', '.join(PSEUDO_LABEL_PERTURBATIONS)}, "
                   f"got {self.pseudo_labels!r}")
        yield from self._organ_problems()
        low, high = VARIATION_LIMITS
        if not _is_number(self.variation) or not low <= self.variation <= high:
            yield f"variation must be a number from {low} to {high}, got {self.variation!r}"
        if self.fully_labeled and (self.partial_labels or self.pseudo_labels):
            yield "fully_labeled cannot be combined with partial_labels or pseudo_labels"
        if self.semi_supervised is not None:
            yield from self._semi_supervised_problems()
        if self.paired and self.semi_supervised is not None:
            yield "paired needs target domains and cannot be combined with semi_supervised"
        elif self.paired and _is_int(self.n_target) and _is_int(self.n_source) and self.n_target > self.n_source:
            yield (f"paired gives every target training case the anatomy of the CT case of its index: n_target "
                   f"{self.n_target} must not exceed n_source {self.n_source}")

    def _organ_problems(self) -> Iterable[str]:
        organs, allowed = self.organs, ", ".join(ORGANS)
        if not isinstance(organs, tuple) or not all(isinstance(o, str) for o in organs):
            yield f"organs must be a list of organ names from: {allowed}; got {organs!r}"
            return
        unknown = [o for o in organs if o not in ORGANS]
        duplicates = sorted({o for o in organs if organs.count(o) > 1})
        if not organs:
            yield f"organs must name at least one organ of: {allowed}"
        elif unknown:
            yield f"unknown organ(s) {', '.join(map(repr, unknown))} in organs; choose from: {allowed}"
        elif duplicates:
            yield f"organs names {', '.join(duplicates)} more than once; name each organ once"
        elif self.partial_labels and ("gallbladder" not in organs or len(organs) < 2):
            yield (f"partial_labels annotates only the gallbladder in T1 and all other organs in CT, so organs must "
                   f"include the gallbladder and at least one other organ; got {', '.join(organs)}")
        low, high = ORGAN_SCALE_LIMITS
        scale = self.organ_scale
        if not _is_number(scale) or not low <= scale <= high:
            yield f"organ_scale must be a number from {low} to {high}, got {scale!r}"

    def _semi_supervised_problems(self) -> Iterable[str]:
        fraction = self.semi_supervised
        if not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
            yield f"semi_supervised must be a fraction between 0 and 1 (exclusive), got {fraction!r}"
        elif self.partial_labels:
            yield "semi_supervised has a single domain and cannot be combined with partial_labels"
        elif not 1 <= self.n_labeled < self.n_source:
            yield (f"semi_supervised {fraction} of n_source {self.n_source} gives {self.n_labeled} "
                   f"labeled cases; choose values that leave at least one labeled and one unlabeled case")

    @property
    def domains(self) -> tuple[str, ...]:
        return (SOURCE_DOMAIN,) if self.semi_supervised is not None else tuple(DOMAIN_MODALITIES)

    @property
    def targets(self) -> tuple[str, ...]:
        return (SOURCE_DOMAIN,) if self.semi_supervised is not None else TARGET_DOMAINS

    @property
    def n_labeled(self) -> int:
        """Labeled source training cases: all of them, or round(fraction * n_source) if semi."""
        if self.semi_supervised is None:
            return self.n_source
        return int(round(self.semi_supervised * self.n_source))

    def subject(self, plan: "CasePlan") -> str | None:
        """The subject of a training case of a paired dataset: case i of every domain shows subject i."""
        return f"subject_{plan.index:03d}" if self.paired and plan.split == "train" else None

    @property
    def labels(self) -> dict[str, int]:
        """The dataset's label map: background 0, the ``organs`` 1..n in order, ignore n + 1."""
        return {"background": 0, **{o: i for i, o in enumerate(self.organs, start=1)},
                "ignore": len(self.organs) + 1}

    @property
    def ignore_label(self) -> int:
        return len(self.organs) + 1

    @property
    def label_lookup(self) -> np.ndarray:
        """uint8 table from the rendered labels (:data:`~.anatomy.LABELS`) to the dataset's:
        organs left out become background."""
        lookup = np.zeros(max(LABELS.values()) + 1, np.uint8)
        for organ, value in self.labels.items():
            lookup[LABELS[organ]] = value
        return lookup

    @property
    def structures(self) -> tuple[Structure, ...]:
        """The painted anatomy, organs scaled by ``organ_scale``."""
        return scaled_anatomy(self.organ_scale)

    def annotated(self, domain: str) -> tuple[str, ...]:
        """Classes annotated in ``domain``'s ground-truth training label files."""
        if self.partial_labels:
            return tuple(o for o in PARTIAL_ANNOTATIONS[domain] if o in self.organs)
        if self.fully_labeled or domain == SOURCE_DOMAIN:
            return self.organs
        return ()


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class CasePlan:
    """One case to write: its id, domain, index and split, and for training cases what its label
    file holds (``ground_truth``, ``pseudo`` or ``none``) and, for ground-truth cases, which of
    their unannotated classes are filled with initial pseudo labels (``pseudo``)."""
    case_id: str
    domain: str
    index: int
    split: str
    labels: str = "ground_truth"
    pseudo: tuple[str, ...] = ()


def plan_cases(options: PhantomOptions) -> list[CasePlan]:
    """Every case of the dataset: training cases (source first), then test cases per domain."""
    unlabeled = "pseudo" if options.pseudo_labels else "none"
    plans = []
    for domain in options.domains:
        n = options.n_source if domain == SOURCE_DOMAIN else options.n_target
        for i in range(n):
            within_labeled = domain != SOURCE_DOMAIN or i < options.n_labeled
            labeled = options.fully_labeled or (bool(options.annotated(domain)) and within_labeled)
            filled = tuple(o for o in options.organs if o not in options.annotated(domain)) \
                if labeled and options.pseudo_labels else ()
            plans.append(CasePlan(f"ph_{domain}_{i:03d}", domain, i, "train",
                                  "ground_truth" if labeled else unlabeled, filled))
    for domain in options.domains:
        plans += [CasePlan(f"ph_{domain}_ts{i:03d}", domain, i, "test") for i in range(options.n_test)]
    return plans


def domain_table(options: PhantomOptions, plans: Sequence[CasePlan]) -> dict:
    """The ``dataset.json["uda"]`` entry; fully labelled test cases of partially annotated domains
    say so with their own ``annotated_labels``."""
    def annotated_json(domain):
        names = options.annotated(domain)
        return "all" if names == options.organs else list(names)

    cases, test_cases = {}, {}
    for plan in plans:
        if plan.split == "train":
            entry = {"domain": plan.domain, "labels": plan.labels}
            if options.subject(plan):
                entry["subject"] = options.subject(plan)
            if plan.pseudo:
                entry["pseudo_labels"] = list(plan.pseudo)
            if plan.labels == "pseudo" or plan.pseudo:
                entry["round"] = 0
            cases[plan.case_id] = entry
        else:
            entry = {"domain": plan.domain}
            if options.annotated(plan.domain) != options.organs:
                entry["annotated_labels"] = list(options.organs)
            test_cases[plan.case_id] = entry
    return {"domains": {d: {"modality": DOMAIN_MODALITIES[d], "annotated_labels": annotated_json(d)}
                        for d in options.domains},
            "target": list(options.targets), "cases": cases, "test_cases": test_cases}


def dataset_json(options: PhantomOptions, plans: Sequence[CasePlan]) -> dict:
    """The complete, validated dataset.json."""
    content = {
        "name": options.name,
        "description": "nnunet_uda synthetic cross-modality abdominal phantom (nnunet_uda.synthetic)",
        "channel_names": {"0": "image"},
        "labels": options.labels,
        "numTraining": sum(p.split == "train" for p in plans),
        "file_ending": FILE_ENDING,
        "uda": domain_table(options, plans),
        "phantom": {"seed": options.seed, "shape": list(options.shape),
                    "spacing": {d: list(acquisition_grid(d, options.shape).spacing) for d in options.domains},
                    "partial_labels": options.partial_labels, "pseudo_labels": options.pseudo_labels,
                    "semi_supervised": options.semi_supervised, "fully_labeled": options.fully_labeled,
                    "paired": options.paired, "organs": list(options.organs),
                    "organ_scale": options.organ_scale, "variation": options.variation},
    }
    DomainTable.from_dataset_json(content)
    return content
