"""The domain table: which domain each case of an nnU-Net dataset belongs to.

nnU-Net's dataset format knows neither domains nor partial or missing labels. nnunet_uda keeps
the format and adds one key to ``dataset.json`` (extra keys survive nnU-Net's preprocessing and
are copied to the preprocessed, results and prediction folders)::

    "uda": {
        "domains": {
            "CT": {"modality": "CT", "annotated_labels": "all"},
            "T1": {"modality": "MR", "annotated_labels": []},
            "T2": {"modality": "MR", "annotated_labels": ["liver"]}
        },
        "target": ["T1", "T2"],
        "cases": {
            "case_000": {"domain": "CT", "labels": "ground_truth"},
            "case_100": {"domain": "T1", "labels": "none"},
            "case_200": {"domain": "T2", "labels": "pseudo", "round": 1},
            "case_300": {"domain": "T2", "labels": "ground_truth", "pseudo_labels": ["spleen"], "round": 0}
        },
        "test_cases": {"case_900": {"domain": "T1"}}
    }

- ``domains``: every domain, its ``modality`` (it selects the intensity harmonisation,
  :mod:`nnunet_uda.intensity`) and the classes annotated in its ground-truth cases (label names or
  ``"all"``); a class missing there is drawn as background in that domain's label files (partial labels);
  ``"harmonized": false`` marks a domain whose images are stored as acquired, not harmonised
  (default true: the dataset convention);
- ``target``: the domain(s) to adapt to; the first is the default inference domain;
- ``cases``: every training case; ``labels`` is ``ground_truth``, ``pseudo`` (``round`` 0 for initial
  pseudo labels) or ``none`` (a label file of nnU-Net's ignore label); optional ``annotated_labels``,
  ``pseudo_labels`` (classes of a ground-truth case that come from initial pseudo labels, AICL's
  l_supUL), ``subject`` (cases of different domains with one subject are a registered modality pair,
  :meth:`DomainTable.twin`) and ``translated_from`` (``nnUNetv2_uda_translate``);
- ``test_cases``: the cases of ``imagesTs``.

docs/datasets.md describes every key with its use.
The order of ``domains`` fixes the domain indices used by conditional instance normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

LABEL_KINDS = ("ground_truth", "pseudo", "none")
TABLE_KEY = "uda"


class DomainTableError(ValueError):
    """A dataset's domain table is missing or inconsistent; the message names what and the fix."""


@dataclass(frozen=True)
class Domain:
    name: str
    modality: str
    annotated_labels: tuple[str, ...]
    harmonized: bool = True


@dataclass(frozen=True)
class CaseEntry:
    domain: str
    labels: str = "ground_truth"
    round: int | None = None
    annotated_labels: tuple[str, ...] | None = None
    pseudo_labels: tuple[str, ...] = ()
    subject: str | None = None
    translated_from: str | None = None


class DomainTable:
    """Parsed and validated ``dataset.json["uda"]``.

    Build it with :meth:`from_dataset_json`; every inconsistency raises :class:`DomainTableError`.
    """

    def __init__(self, domains: Mapping[str, Domain], target: Iterable[str],
                 cases: Mapping[str, CaseEntry], test_cases: Mapping[str, CaseEntry],
                 label_names: Mapping[str, int]):
        self.domains = dict(domains)
        self.target = list(target)
        self.cases = dict(cases)
        self.test_cases = dict(test_cases)
        self.label_names = dict(label_names)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dataset_json(cls, dataset_json: Mapping, where: str = "dataset.json") -> "DomainTable":
        """Parse and validate the table in ``dataset_json``; ``where`` names the file in errors."""
        if TABLE_KEY not in dataset_json:
            raise DomainTableError(
                f"{where} has no domain table: add a \"{TABLE_KEY}\" entry with \"domains\", "
                f"\"target\" and \"cases\" (see docs/datasets.md, section 'Dataset conventions', or write "
                f"one with nnunet_uda.domains.DomainTable.to_json)")
        table = dataset_json[TABLE_KEY]
        labels = foreground_labels(dataset_json, where)
        for key in ("domains", "target", "cases"):
            if key not in table:
                raise DomainTableError(f"{where}: the domain table \"{TABLE_KEY}\" has no \"{key}\" entry; "
                                       f"add it (see docs/datasets.md, section 'Dataset conventions')")
        if not isinstance(table["domains"], Mapping) or not table["domains"]:
            raise DomainTableError(f"{where}: \"{TABLE_KEY}.domains\" must map at least one domain name "
                                   f"to its description, e.g. {{\"CT\": {{\"modality\": \"CT\"}}}}")
        domains = {}
        for name, spec in table["domains"].items():
            annotated = spec.get("annotated_labels", "all")
            annotated = tuple(labels) if annotated == "all" else tuple(annotated)
            for label in annotated:
                if label not in labels:
                    raise DomainTableError(
                        f"{where}: domain \"{name}\" lists \"{label}\" as annotated, but it is not a "
                        f"foreground label of dataset.json[\"labels\"] ({', '.join(labels)}); fix the "
                        f"name or add the label")
            harmonized = spec.get("harmonized", True)
            if not isinstance(harmonized, bool):
                raise DomainTableError(f"{where}: domain \"{name}\" has \"harmonized\": {harmonized!r}; use true "
                                       f"(images harmonised by modality, the default) or false (stored as acquired)")
            domains[name] = Domain(name, str(spec.get("modality", name)), annotated, harmonized)

        target = table["target"]
        target = [target] if isinstance(target, str) else list(target)
        if not target:
            raise DomainTableError(f"{where}: \"{TABLE_KEY}.target\" is empty; name the domain(s) to adapt to, "
                                   f"e.g. \"target\": [\"{next(iter(domains))}\"]")
        for name in target:
            if name not in domains:
                raise DomainTableError(f"{where}: target domain \"{name}\" is not one of the domains "
                                       f"({', '.join(domains)}); fix \"{TABLE_KEY}.target\"")

        cases = {k: _parse_case(k, v, domains, labels, where, "cases") for k, v in table["cases"].items()}
        test_cases = {k: _parse_case(k, v, domains, labels, where, "test_cases")
                      for k, v in table.get("test_cases", {}).items()}
        _check_subjects(cases, where)
        return cls(domains, target, cases, test_cases, labels)

    def to_json(self) -> dict:
        """The table as it is stored in ``dataset.json["uda"]``."""
        all_labels = tuple(self.label_names)

        def case_json(entry: CaseEntry, test: bool) -> dict:
            out = {"domain": entry.domain}
            if not test:
                out["labels"] = entry.labels
            if entry.round is not None:
                out["round"] = entry.round
            if entry.annotated_labels is not None:
                out["annotated_labels"] = list(entry.annotated_labels)
            if entry.pseudo_labels:
                out["pseudo_labels"] = list(entry.pseudo_labels)
            if entry.subject is not None:
                out["subject"] = entry.subject
            if entry.translated_from is not None:
                out["translated_from"] = entry.translated_from
            return out

        def domain_json(d: Domain) -> dict:
            out = {"modality": d.modality,
                   "annotated_labels": "all" if d.annotated_labels == all_labels else list(d.annotated_labels)}
            if not d.harmonized:
                out["harmonized"] = False
            return out

        return {
            "domains": {d.name: domain_json(d) for d in self.domains.values()},
            "target": list(self.target),
            "cases": {k: case_json(v, False) for k, v in self.cases.items()},
            "test_cases": {k: case_json(v, True) for k, v in self.test_cases.items()},
        }

    # ------------------------------------------------------------------ queries
    @property
    def domain_names(self) -> list[str]:
        """Domains in table order; a domain's position is its index for the networks."""
        return list(self.domains)

    @property
    def source(self) -> list[str]:
        return [d for d in self.domains if d not in self.target]

    def domain_index(self, name: str) -> int:
        if name not in self.domains:
            raise DomainTableError(f"unknown domain \"{name}\"; the dataset's domains are "
                                   f"{', '.join(self.domains)}")
        return self.domain_names.index(name)

    def entry(self, case: str) -> CaseEntry:
        if case in self.cases:
            return self.cases[case]
        if case in self.test_cases:
            return self.test_cases[case]
        raise DomainTableError(f"case \"{case}\" is not in the domain table; add it to "
                               f"\"{TABLE_KEY}.cases\" (training) or \"{TABLE_KEY}.test_cases\" (test)")

    def domain_of(self, case: str) -> str:
        return self.entry(case).domain

    def annotated_labels(self, case: str) -> tuple[str, ...]:
        """Names of the classes whose voxels are labeled in ``case``'s label file, by an annotator
        or by pseudo labels."""
        entry = self.entry(case)
        if entry.annotated_labels is not None:
            labeled = entry.annotated_labels
        elif entry.labels == "none":
            labeled = ()
        elif entry.labels == "pseudo":
            labeled = tuple(self.label_names)
        else:
            labeled = self.domains[entry.domain].annotated_labels
        return labeled + entry.pseudo_labels

    def pseudo_labeled(self, case: str) -> tuple[str, ...]:
        """Names of the classes of ``case``'s label file that are pseudo labels."""
        entry = self.entry(case)
        return self.annotated_labels(case) if entry.labels == "pseudo" else entry.pseudo_labels

    def ground_truth_labels(self, case: str) -> tuple[str, ...]:
        """Names of the classes of ``case``'s label file drawn by an annotator."""
        pseudo = set(self.pseudo_labeled(case))
        return tuple(n for n in self.annotated_labels(case) if n not in pseudo)

    def annotated_classes(self, case: str) -> list[int]:
        """Label values labeled in ``case`` (foreground only, either source)."""
        return self.classes_of(self.annotated_labels(case))

    def classes_of(self, names: Iterable[str]) -> list[int]:
        """Label values of label names."""
        return [self.label_names[n] for n in names]

    def cases_of(self, domains: Iterable[str]) -> list[str]:
        wanted = set(domains)
        return [k for k, v in self.cases.items() if v.domain in wanted]

    def cases_with_labels(self, kind: str) -> list[str]:
        return [k for k, v in self.cases.items() if v.labels == kind]

    def twin(self, case: str, domains: Iterable[str]) -> str | None:
        """The training case of one of ``domains`` that shows ``case``'s subject, or None (no subject,
        or none of its cases is of those domains)."""
        subject = self.entry(case).subject
        if subject is None:
            return None
        wanted = set(domains)
        return next((k for k, v in self.cases.items() if v.subject == subject and v.domain in wanted
                     and k != case), None)


def foreground_labels(dataset_json: Mapping, where: str) -> dict[str, int]:
    """Foreground label names to values, without background and the ignore label; ``where`` names
    the dataset.json in errors."""
    if "labels" not in dataset_json:
        raise DomainTableError(f"{where} has no \"labels\" entry")
    out = {}
    for name, value in dataset_json["labels"].items():
        if name in ("background", "ignore"):
            continue
        if not isinstance(value, int):
            raise DomainTableError(f"{where}: label \"{name}\" has value {value!r}; nnunet_uda supports "
                                   f"plain integer labels only (no region-based training)")
        out[name] = value
    return out


def _parse_case(case: str, spec, domains: Mapping[str, Domain], labels: Mapping[str, int], where: str,
                section: str) -> CaseEntry:
    if isinstance(spec, str):
        spec = {"domain": spec}
    domain = spec.get("domain")
    if domain not in domains:
        raise DomainTableError(f"{where}: case \"{case}\" in \"{TABLE_KEY}.{section}\" has domain {domain!r}, "
                               f"which is not one of the domains ({', '.join(domains)}); fix the case's "
                               f"domain or declare the domain in \"{TABLE_KEY}.domains\"")
    kind = spec.get("labels", "ground_truth")
    if kind not in LABEL_KINDS:
        raise DomainTableError(f"{where}: case \"{case}\" has labels {kind!r}; use one of "
                               f"{', '.join(LABEL_KINDS)}")
    annotated = spec.get("annotated_labels")
    if annotated is not None:
        for label in annotated:
            if label not in labels:
                raise DomainTableError(f"{where}: case \"{case}\" lists \"{label}\" as annotated, but it is "
                                       f"not a foreground label ({', '.join(labels)})")
        annotated = tuple(annotated)
    pseudo = tuple(spec.get("pseudo_labels", ()))
    if pseudo and kind != "ground_truth":
        raise DomainTableError(f"{where}: case \"{case}\" lists \"pseudo_labels\" but its labels are {kind!r}; "
                               f"only ground_truth cases mix annotated and pseudo-labeled classes (every class of a "
                               f"pseudo case is a pseudo label)")
    for label in pseudo:
        if label not in labels:
            raise DomainTableError(f"{where}: case \"{case}\" lists \"{label}\" in \"pseudo_labels\", but it is "
                                   f"not a foreground label ({', '.join(labels)})")
        if label in (domains[domain].annotated_labels if annotated is None else annotated):
            raise DomainTableError(f"{where}: case \"{case}\" lists \"{label}\" in \"pseudo_labels\", but it is "
                                   f"also annotated by hand there; a class has one source per case")
    subject = spec.get("subject")
    if subject is not None and (not isinstance(subject, str) or not subject):
        raise DomainTableError(f"{where}: case \"{case}\" has subject {subject!r}; a subject is a non-empty "
                               f"string naming the person or specimen, e.g. \"s000\"")
    translated_from = spec.get("translated_from")
    if translated_from is not None and (not isinstance(translated_from, str) or not translated_from):
        raise DomainTableError(f"{where}: case \"{case}\" has translated_from {translated_from!r}; it names the "
                               f"source case the image was translated from, e.g. \"case_000\"")
    return CaseEntry(domain, kind, spec.get("round"), annotated, pseudo, subject, translated_from)


def _check_subjects(cases: Mapping[str, CaseEntry], where: str) -> None:
    """A subject has at most one training case per domain (its modality pair must be unambiguous)."""
    seen: dict[tuple[str, str], str] = {}
    for case, entry in cases.items():
        if entry.subject is None:
            continue
        other = seen.setdefault((entry.subject, entry.domain), case)
        if other != case:
            raise DomainTableError(f"{where}: subject \"{entry.subject}\" has two {entry.domain} training cases, "
                                   f"\"{other}\" and \"{case}\"; a subject has one case per domain: give one of "
                                   f"them another subject")
