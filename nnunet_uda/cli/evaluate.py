"""nnUNetv2_uda_evaluate: Dice, NSD, HD95 and ASSD of a prediction folder, per domain.

Example::

    nnUNetv2_uda_evaluate -ref nnUNet_raw/Dataset005_X/labelsTs -pred predictions -d 5 -tol liver=3
    nnUNetv2_uda_evaluate -ref labelsTs -pred predictions -d 5 -preset flare   # FLARE 2024 scoring

writes ``summary.json`` and ``summary.md`` (with ``-preset flare`` also the official script's
``DSC_NSD.csv``) to ``-o`` (default: the prediction folder) and prints the Markdown tables. See :mod:`nnunet_uda.evaluation.report` for the output format,
:mod:`nnunet_uda.evaluation.metrics` for the metric conventions and
:mod:`nnunet_uda.evaluation.flare` for the FLARE preset's rules and their sources.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from nnunet_uda.data.raw import find_raw_dataset, load_dataset_json
from nnunet_uda.evaluation import EvaluationError
from nnunet_uda.evaluation.report import PRESETS, evaluate_folder, format_markdown


def parse_tolerances(items: Sequence[str]) -> dict[str, float]:
    """``["liver=3", "spleen=1.5"]`` -> ``{"liver": 3.0, "spleen": 1.5}``."""
    tolerances = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            tolerances[name] = float(value)
        except ValueError:
            raise SystemExit(f"nnUNetv2_uda_evaluate: -tol expects organ=mm, e.g. liver=2.5, got {item!r}") from None
    return tolerances


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_uda_evaluate",
        description="Evaluate predictions against reference labels (Dice, normalized surface Dice, HD95, "
                    "ASSD), averaged per domain of the dataset's domain table.")
    parser.add_argument("-ref", required=True, help="folder of reference label files (e.g. labelsTs)")
    parser.add_argument("-pred", required=True, help="folder of predicted label files, same file names")
    parser.add_argument("-d", required=True, help="dataset id, name or raw folder (its dataset.json gives the "
                                                  "labels, the file ending and the domains)")
    parser.add_argument("-o", default=None, help="output folder for summary.json and summary.md "
                                                 "(default: the prediction folder)")
    parser.add_argument("-tol", nargs="+", default=[], metavar="ORGAN=MM",
                        help="NSD tolerance in mm per organ (default 2 mm, or the dataset's "
                             "uda.nsd_tolerance_mm, or the preset's); overrides them all")
    parser.add_argument("-preset", "--preset", choices=PRESETS, default=None,
                        help="score by a challenge's rules. flare: the FLARE 2024 (Task 3) official evaluation "
                             "script's numbers: the 13 FLARE organs, matched by label name; NSD tolerances "
                             "liver 5, kidneys 3, spleen 3, pancreas 5, aorta 2, IVC 2, adrenal glands 2, "
                             "gallbladder 2, esophagus 3, stomach 5, duodenum 7 mm; NSD 0 where Dice < 0.2; "
                             "aorta, IVC and esophagus on the reference's axial slab as the script slices it; "
                             "values rounded as the script rounds them; also writes its DSC_NSD.csv")
    parser.add_argument("-np", type=int, default=2, help="number of worker processes (default 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    tolerances = parse_tolerances(args.tol)
    try:
        dataset_json = load_dataset_json(find_raw_dataset(args.d))
    except (FileNotFoundError, RuntimeError) as error:
        raise SystemExit(f"nnUNetv2_uda_evaluate: {error}") from None
    try:
        summary = evaluate_folder(args.ref, args.pred, dataset_json, output_folder=args.o or args.pred,
                                  tolerances_mm=tolerances, num_processes=args.np, preset=args.preset)
    except (FileNotFoundError, EvaluationError) as error:
        raise SystemExit(f"nnUNetv2_uda_evaluate: {error}") from None
    print(format_markdown(summary))
    print(f"summary.json and summary.md written to {args.o or args.pred}")


if __name__ == "__main__":
    main()
