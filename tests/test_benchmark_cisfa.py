"""``examples/benchmark_cisfa.py``: every trainer's generator gets its own translated dataset per target domain."""
from conftest import load_example


def test_each_trainer_and_domain_translates_into_its_own_dataset():
    module = load_example("benchmark_cisfa")
    ids = [module.translated_dataset_id(985, trainer, domain) for trainer in module.TRAINERS
           for domain in module.TARGETS]
    assert len(set(ids)) == len(ids) and 985 not in ids and max(ids) <= 999
