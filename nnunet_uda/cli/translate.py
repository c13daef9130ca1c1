"""nnUNetv2_uda_translate: a labeled source dataset translated into target domains, as a new raw dataset.

Example (after ``nnUNetv2_uda_cyclegan_train`` for T1 and T2)::

    nnUNetv2_uda_translate -d 960 -o 962 -m cyclegan_T1 cyclegan_T2
    nnUNetv2_uda_plan_and_preprocess -d 962
    nnUNetv2_train 962 3d_fullres 0 -tr nnUNetTrainerSelfTraining -p nnUNetResEncUNetMPlans

Each ``-m`` folder holds a trained model (``generator_final.pth``, and ``cyclegan.json`` or, for a
``nnUNetTrainerCISFA`` fold folder, ``translation.json`` naming its target domain). See
:mod:`nnunet_uda.gan.dataset` for what the new dataset holds.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from nnunet_uda.data.raw import find_raw_dataset, load_dataset_json, raw_root
from nnunet_uda.gan.dataset import write_translated_dataset
from nnunet_uda.gan.training import FINAL, load_generator


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="nnUNetv2_uda_translate", description=__doc__.splitlines()[0])
    parser.add_argument("-d", required=True, help="source raw dataset id or name (with a domain table)")
    parser.add_argument("-o", type=int, required=True, help="id of the new dataset")
    parser.add_argument("-m", nargs="+", required=True, help="trained translation model folders, one per domain")
    parser.add_argument("--name", default=None, help="name of the new dataset (default: <source name>Translated)")
    parser.add_argument("--batch_size", type=int, default=16, help="slices per generator call (default: 16)")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that id")
    args = parser.parse_args(argv)

    raw = find_raw_dataset(args.d)
    generators = {}
    for folder in map(Path, args.m):
        config = next((folder / n for n in ("cyclegan.json", "translation.json") if (folder / n).is_file()), None)
        weights = folder / FINAL
        if config is None or not weights.is_file():
            raise SystemExit(f"nnUNetv2_uda_translate: {folder} has no finished model (cyclegan.json or "
                             f"translation.json, and {weights.name}); train it to the end with "
                             f"nnUNetv2_uda_cyclegan_train or nnUNetv2_train -tr nnUNetTrainerCISFA")
        domain = json.loads(config.read_text())["target_domain"]
        if domain in generators:
            raise SystemExit(f"nnUNetv2_uda_translate: two models translate into {domain}; give one per domain")
        generators[domain] = load_generator(weights, args.device)
    name = args.name or raw.name.split("_", 1)[1] + "Translated"
    try:
        final, run = write_translated_dataset(raw, load_dataset_json(raw), generators, args.o, name, raw_root(),
                                              args.batch_size, args.device, args.overwrite)
    except (ValueError, FileExistsError) as error:
        raise SystemExit(f"nnUNetv2_uda_translate: {error}") from None
    print(f"{run.cases} translated cases, {run.slices} slices in {run.seconds:.1f} s "
          f"({run.slices_per_second:.1f} slices/s, reading and writing included): {final}")


if __name__ == "__main__":
    main()
