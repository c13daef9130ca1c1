"""A labeled source dataset translated into target domains, as a new nnU-Net raw dataset (FLARE 2024
Task 3, section 2.2: nnU-Net trained on CT translated into every MRI sequence, with the CT labels).

For each translation model (one per target domain) every labeled source training case is
translated slice by slice (:func:`~nnunet_uda.gan.translation.translate_image_file`, the source
geometry kept exactly) into ``<case>_to_<domain>``, with the source case's label file copied. The
domain table records the domain each translation imitates, that it was translated and from which
case (``translated_from``), and the classes its labels annotate. The target domains' own training
cases (unlabeled, for the self-training rounds that follow) and test cases come along unchanged;
the source domain's do not. Written to a temporary folder beside the final one and moved into place
when complete.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from tqdm import tqdm

from nnunet_uda.data.raw import atomic_folder, dataset_folder_name, image_file, save_json
from nnunet_uda.domains import TABLE_KEY, DomainTable
from nnunet_uda.gan.translation import translate_image_file


@dataclass
class TranslationRun:
    cases: int
    slices: int
    seconds: float

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds > 0 else float("nan")


def translated_case(case: str, domain: str) -> str:
    return f"{case}_to_{domain}"


def write_translated_dataset(raw: Path, dataset_json: Mapping, generators: Mapping[str, torch.nn.Module],
                             dataset_id: int, name: str, raw_root: Path, batch_size: int = 16,
                             device: str = "cpu", overwrite: bool = False) -> tuple[Path, TranslationRun]:
    """The new dataset ``dataset_id`` holding every labeled source case translated by each generator
    (target domain -> source-to-target generator), and the target domains' own cases."""
    raw = Path(raw)
    table = DomainTable.from_dataset_json(dataset_json, str(raw / "dataset.json"))
    unknown = [d for d in generators if d not in table.target]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not target domains of {raw.name} ({', '.join(table.target)})")
    final = Path(raw_root) / dataset_folder_name(dataset_id, name)
    if final.resolve() == raw.resolve():
        raise ValueError(f"the new dataset {final} would replace the one it is built from; choose another id")
    ending = dataset_json["file_ending"]
    sources = [c for c in table.cases_of(table.source) if table.entry(c).labels == "ground_truth"]
    if not sources:
        raise ValueError(f"{raw.name} has no labeled source-domain training cases to translate")
    stored = table.to_json()
    domains = list(generators)
    slices, start = 0, time.perf_counter()
    with atomic_folder(final, overwrite) as tmp:
        for folder in ("imagesTr", "labelsTr"):
            (tmp / folder).mkdir()
        cases = {}
        with tqdm(total=len(sources) * len(domains), desc="translating", unit="case") as bar:
            for domain in domains:
                for case in sources:
                    new = translated_case(case, domain)
                    slices += translate_image_file(generators[domain], image_file(raw / "imagesTr", case, ending),
                                                   image_file(tmp / "imagesTr", new, ending), batch_size, device)
                    shutil.copy2(raw / "labelsTr" / f"{case}{ending}", tmp / "labelsTr" / f"{new}{ending}")
                    cases[new] = {"domain": domain, "labels": "ground_truth", "translated_from": case,
                                  "annotated_labels": list(table.annotated_labels(case))}
                    bar.update()
        seconds = time.perf_counter() - start
        for case in table.cases_of(domains):
            shutil.copy2(image_file(raw / "imagesTr", case, ending), tmp / "imagesTr")
            shutil.copy2(raw / "labelsTr" / f"{case}{ending}", tmp / "labelsTr")
            cases[case] = stored["cases"][case]
        tests = {c: e for c, e in stored.get("test_cases", {}).items() if e["domain"] in domains}
        for case in tests:
            for folder, path in (("imagesTs", image_file(raw / "imagesTs", case, ending)),
                                 ("labelsTs", raw / "labelsTs" / f"{case}{ending}")):
                if path.is_file():
                    (tmp / folder).mkdir(exist_ok=True)
                    shutil.copy2(path, tmp / folder)
        table_json = {"domains": {d: stored["domains"][d] for d in domains}, "target": domains, "cases": cases,
                      "test_cases": tests}
        new_json = {k: v for k, v in dataset_json.items() if k != TABLE_KEY}
        new_json.update(name=name, numTraining=len(cases), translation={"source_dataset": raw.name,
                                                                        "source_domains": table.source})
        new_json[TABLE_KEY] = table_json
        DomainTable.from_dataset_json(new_json, str(final / "dataset.json"))
        save_json(new_json, tmp / "dataset.json")
    return final, TranslationRun(len(sources) * len(domains), slices, seconds)

