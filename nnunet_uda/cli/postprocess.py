"""nnUNetv2_uda_postprocess: per-organ rules (small components, largest component, holes) on a folder of labels.

Examples::

    nnUNetv2_uda_postprocess -i predictions -o predictions_pp --preset flare
    nnUNetv2_uda_postprocess -i predictions -o predictions_pp -config rules.json -d 5
    nnUNetv2_uda_postprocess -i other_predictions -o other_pp -config predictions_pp/postprocessing.json

Every label file of ``-i`` (ending in the dataset.json's ``file_ending``, else ``.nii.gz``) is written to
``-o`` with the same geometry and pixel type, together with ``postprocessing.json``, the effective rules,
which ``-config`` accepts again. See :mod:`nnunet_uda.postprocessing` for the rules, their order and the
configuration format.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from nnunet_uda.data.raw import find_raw_dataset, load_dataset_json
from nnunet_uda.postprocessing import (CONFIG_FILE, DEFAULT_FILE_ENDING, PRESETS, PostprocessingError,
                                       dataset_organs, load_config, postprocess_folder, preset_config)

PROG = "nnUNetv2_uda_postprocess"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Post-process predicted label files with per-organ rules, applied in this order: remove "
                    "connected components under a volume (min_volume_ml), keep the largest connected component "
                    "(largest_component), fill 3D holes where the label is background (fill_holes).")
    parser.add_argument("-i", required=True, help="folder of label files (e.g. nnUNetv2_predict's output)")
    parser.add_argument("-o", required=True, help="output folder (written when complete); must not be -i")
    rules = parser.add_mutually_exclusive_group(required=True)
    rules.add_argument("-config", default=None,
                       help="JSON rules, e.g. {\"labels\": {\"liver\": {\"largest_component\": true, \"fill_holes\": "
                            "true}}, \"default\": {}, \"connectivity\": 26}; keys are organ names (needs -d or "
                            "-dataset_json) or label values as strings. A postprocessing.json written by this "
                            "command works too")
    rules.add_argument("--preset", choices=list(PRESETS), default=None,
                       help="built-in rules: flare, the 13 FLARE abdominal organs (label values 1-13 without a "
                            "dataset.json, else matched to the dataset's organ names)")
    dataset = parser.add_mutually_exclusive_group()
    dataset.add_argument("-d", default=None, help="dataset id, name or raw folder whose dataset.json gives the "
                                                  "organ names and the file ending")
    dataset.add_argument("-dataset_json", default=None, help="path of a dataset.json, instead of -d")
    parser.add_argument("-np", type=int, default=2, help="number of worker processes (default 2; 1: no workers)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    return parser


def read_dataset_json(dataset: str | None, dataset_json: str | None) -> dict | None:
    """The dataset.json of ``-d`` or ``-dataset_json``, or ``None`` when neither is given."""
    if dataset is not None:
        return load_dataset_json(find_raw_dataset(dataset))
    if dataset_json is None:
        return None
    path = Path(dataset_json)
    if not path.is_file():
        raise FileNotFoundError(f"the dataset.json {path} does not exist; check -dataset_json")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PostprocessingError(f"{path} is not valid JSON ({error}); fix the file") from None


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        dataset_json = read_dataset_json(args.d, args.dataset_json)
        organs = dataset_organs(dataset_json) if dataset_json is not None else None
        config = preset_config(args.preset, organs) if args.preset else load_config(args.config, organs)
        file_ending = (dataset_json or {}).get("file_ending", DEFAULT_FILE_ENDING)
        changed = postprocess_folder(args.i, args.o, config, file_ending=file_ending, num_processes=args.np,
                                     overwrite=args.overwrite)
    except (FileNotFoundError, RuntimeError, PostprocessingError) as error:
        raise SystemExit(f"{PROG}: {error}") from None
    print(config.describe())
    print(f"{len(changed)} label files written to {args.o} ({sum(changed.values())} voxels changed); "
          f"rules saved as {Path(args.o) / CONFIG_FILE}")


if __name__ == "__main__":
    main()
