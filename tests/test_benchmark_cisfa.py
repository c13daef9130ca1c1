"""``examples/benchmark_cisfa.py``: every trainer's generator gets its own translated dataset per target domain."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_each_trainer_and_domain_translates_into_its_own_dataset():
    spec = importlib.util.spec_from_file_location("benchmark_cisfa", ROOT / "examples" / "benchmark_cisfa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ids = [module.translated_dataset_id(985, trainer, domain) for trainer in module.TRAINERS
           for domain in module.TARGETS]
    assert len(set(ids)) == len(ids) and 985 not in ids and max(ids) <= 999
