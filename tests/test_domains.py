import copy

import pytest

from nnunet_uda.domains import DomainTable, DomainTableError
from nnunet_uda.planning import domain_aware_splits

BASE = {
    "labels": {"background": 0, "liver": 1, "spleen": 2, "gallbladder": 3, "ignore": 4},
    "uda": {
        "domains": {"CT": {"modality": "CT", "annotated_labels": ["liver", "spleen"]},
                    "T1": {"modality": "MR", "annotated_labels": ["gallbladder"]},
                    "T2": {"modality": "MR", "annotated_labels": []}},
        "target": ["T1", "T2"],
        "cases": {**{f"ct{i}": {"domain": "CT"} for i in range(6)},
                  **{f"t1_{i}": {"domain": "T1"} for i in range(3)},
                  **{f"t2_{i}": {"domain": "T2", "labels": "none"} for i in range(4)},
                  "t2_pseudo": {"domain": "T2", "labels": "pseudo", "round": 1},
                  "ct_mixed": {"domain": "CT", "pseudo_labels": ["gallbladder"], "round": 0}},
        "test_cases": {"ts_t2": {"domain": "T2"}},
    },
}


def table(mutate=None) -> DomainTable:
    dataset = copy.deepcopy(BASE)
    if mutate:
        mutate(dataset)
    return DomainTable.from_dataset_json(dataset, where="ds/dataset.json")


def test_queries():
    t = table()
    assert t.domain_names == ["CT", "T1", "T2"] and t.source == ["CT"] and t.target == ["T1", "T2"]
    assert t.domain_index("T2") == 2
    assert t.domain_of("ts_t2") == "T2"
    assert t.annotated_classes("ct0") == [1, 2]
    assert t.annotated_classes("t1_0") == [3]
    assert t.annotated_classes("t2_0") == []
    assert t.annotated_classes("t2_pseudo") == [1, 2, 3]
    assert t.cases["t2_pseudo"].round == 1
    assert t.annotated_classes("ct_mixed") == [1, 2, 3]


def test_label_sources():
    t = table()
    assert t.ground_truth_labels("ct_mixed") == ("liver", "spleen") and t.pseudo_labeled("ct_mixed") == ("gallbladder",)
    assert t.ground_truth_labels("t2_pseudo") == ()
    assert t.pseudo_labeled("t2_pseudo") == ("liver", "spleen", "gallbladder")
    assert t.ground_truth_labels("ct0") == ("liver", "spleen") and t.pseudo_labeled("ct0") == ()
    assert t.pseudo_labeled("t2_0") == () and t.ground_truth_labels("t2_0") == ()
    assert t.classes_of(t.pseudo_labeled("ct_mixed")) == [3]
    assert DomainTable.from_dataset_json({"labels": BASE["labels"], "uda": t.to_json()}).to_json() == t.to_json()


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("uda"), "has no domain table"),
    (lambda d: d["uda"].pop("cases"), "no \"cases\" entry"),
    (lambda d: d["uda"].update(target=[]), "\"uda.target\" is empty"),
    (lambda d: d["uda"].update(target=["PET"]), "target domain \"PET\" is not one of the domains"),
    (lambda d: d["uda"]["cases"].update(x={"domain": "PET"}), "case \"x\" .* has domain 'PET'"),
    (lambda d: d["uda"]["domains"]["CT"].update(annotated_labels=["lung"]), "\"lung\" .* not a foreground label"),
    (lambda d: d["uda"]["cases"]["ct0"].update(labels="silver"), "has labels 'silver'"),
    (lambda d: d["uda"]["cases"]["ct0"].update(pseudo_labels=["liver"]), "\"liver\" in \"pseudo_labels\", .* also"),
    (lambda d: d["uda"]["cases"]["ct0"].update(pseudo_labels=["lung"]), "\"lung\" in \"pseudo_labels\", .* not a"),
    (lambda d: d["uda"]["cases"]["t2_0"].update(pseudo_labels=["liver"]), "only ground_truth cases mix"),
    (lambda d: d["uda"]["cases"]["t2_0"].update(subject=3), "subject 3; a subject is a non-empty string"),
    (lambda d: [d["uda"]["cases"][c].update(subject="s1") for c in ("ct0", "ct1")],
     "subject \"s1\" has two CT training cases, \"ct0\" and \"ct1\""),
    (lambda d: d["uda"]["cases"]["t1_0"].update(translated_from=""), "translated_from ''; it names the source case"),
])
def test_bad_tables_name_the_problem_and_the_fix(mutate, message):
    with pytest.raises(DomainTableError, match=message) as info:
        table(mutate)
    assert "ds/dataset.json" in str(info.value)


def test_subjects_pair_the_modalities_of_one_subject():
    def pair(d):
        for case in ("ct0", "t1_0", "t2_0"):
            d["uda"]["cases"][case]["subject"] = "s0"
        d["uda"]["cases"]["t1_1"]["subject"] = "s1"
    t = table(pair)
    assert t.twin("t1_0", t.source) == "ct0" and t.twin("t2_0", ["CT"]) == "ct0" and t.twin("ct0", ["T2"]) == "t2_0"
    assert t.twin("t1_1", t.source) is None and t.twin("t1_2", t.source) is None  # no CT case of s1; no subject
    assert t.to_json()["cases"]["t1_0"]["subject"] == "s0"
    assert DomainTable.from_dataset_json({"labels": BASE["labels"], "uda": t.to_json()}).twin("t1_0", ["CT"]) == "ct0"


def test_translated_cases_name_their_source_and_round_trip():
    t = table(lambda d: d["uda"]["cases"]["t1_0"].update(translated_from="ct0"))
    assert t.entry("t1_0").translated_from == "ct0" and t.entry("ct0").translated_from is None
    stored = t.to_json()["cases"]
    assert stored["t1_0"]["translated_from"] == "ct0" and "translated_from" not in stored["ct0"]
    assert DomainTable.from_dataset_json({"labels": BASE["labels"], "uda": t.to_json()}).entry(
        "t1_0").translated_from == "ct0"


def test_unknown_case_and_domain():
    t = table()
    with pytest.raises(DomainTableError, match="case \"nope\" is not in the domain table"):
        t.domain_of("nope")
    with pytest.raises(DomainTableError, match="unknown domain"):
        t.domain_index("PET")


def test_folds_validate_only_ground_truth_cases_and_spread_domains():
    t = table()
    splits = domain_aware_splits(t, n_folds=3)
    labeled = {f"ct{i}" for i in range(6)} | {f"t1_{i}" for i in range(3)} | {"ct_mixed"}
    assert sorted(c for s in splits for c in s["val"]) == sorted(labeled)
    for s in splits:
        assert set(s["val"]) <= labeled and not set(s["val"]) & set(s["train"])
        assert {"t2_0", "t2_pseudo"} <= set(s["train"])
        assert any(c.startswith("ct") for c in s["val"]) and any(c.startswith("t1") for c in s["val"])
    assert splits == domain_aware_splits(t, n_folds=3)  # seeded


def test_too_few_labeled_cases_for_the_folds():
    with pytest.raises(ValueError, match="fewer than the 20 folds"):
        domain_aware_splits(table(), n_folds=20)
