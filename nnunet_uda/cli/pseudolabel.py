"""nnUNetv2_uda_pseudolabel: one self-training round (FLARE 2024 Task 3, section 2.3).

Example (round 1 from a 5-fold model trained on dataset 500)::

    nnUNetv2_uda_pseudolabel -d 500 -o 501 -tr nnUNetTrainer -p nnUNetResEncUNetMPlans --top 50

1. every unlabeled target case of ``-d`` is predicted by each fold (``-f``) on its own, with its
   probabilities (:mod:`nnunet_uda.pseudolabels.fold_predictions`); finished predictions are kept,
   so an interrupted round continues; ``-num_parts N -part_id i`` predicts one part and stops
   (run the command once more without them to select);
2. per case and organ the fold consistency of eq. 8, the case score, and the fused label of eq. 9,
   optionally post-processed (``-postprocess``);
3. the best cases of each target modality (``--top``, ``--fraction`` or ``--threshold``);
4. a new raw dataset ``-o`` with the labeled cases of ``-d`` and the selected cases as pseudo
   labels of round ``--round``, written whole or not at all;
5. ``report.json`` (every case's scores and whether it was selected), ``scores.png`` and
   ``examples.png`` in the round's working folder (``-work``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch

from nnunet_uda.data.raw import find_raw_dataset, load_dataset_json, raw_root
from nnunet_uda.domains import DomainTable
from nnunet_uda.postprocessing import PostprocessingError, named_config, postprocess_image
from nnunet_uda.pseudolabels.figures import plot_examples, plot_scores
from nnunet_uda.pseudolabels.fold_predictions import predict_folds
from nnunet_uda.pseudolabels.rounds import (RoundInputs, report_json, run_selection, write_report,
                                            write_round_dataset)
from nnunet_uda.pseudolabels.selection import SelectionRule

PROG = "nnUNetv2_uda_pseudolabel"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", required=True, help="dataset the model was trained on: its labeled cases are kept, "
                                                  "its unlabeled target cases are the candidates")
    parser.add_argument("-o", type=int, required=True, help="id of the new raw dataset")
    parser.add_argument("-name", default=None, help="name of the new dataset (default: <name of -d>Round<R>)")
    parser.add_argument("-tr", default="nnUNetTrainer", help="trainer of the model (default nnUNetTrainer)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default 0 1 2 3 4)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name (default checkpoint_final.pth)")
    parser.add_argument("--round", type=int, default=None, help="round number of the new pseudo labels "
                                                                "(default: one more than the latest in -d)")
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument("--top", type=int, help="cases per target modality (the paper: 50; default)")
    rule.add_argument("--fraction", type=float, help="share of each modality's cases, in (0, 1]")
    rule.add_argument("--threshold", type=float, help="keep every case whose score is at least this")
    parser.add_argument("--absent_agreement", type=float, default=1.0, choices=[0.0, 1.0],
                        help="eq. 8's score for two folds that both leave an organ out: 1 (default, absence agrees) "
                             "or 0 (every organ belongs in every case: agreeing on a missed organ is no agreement)")
    parser.add_argument("-postprocess", default=None, help="post-processing of the fused labels: a config JSON of "
                                                           "nnUNetv2_uda_postprocess or 'flare'")
    parser.add_argument("-work", default=None, help="folder for fold predictions, fused labels and the report "
                                                    "(default: pseudolabels_round<R> in the model folder)")
    parser.add_argument("-num_parts", type=int, default=1, help="predict only part -part_id of this many")
    parser.add_argument("-part_id", type=int, default=0)
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring at prediction")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset -o")
    return parser


def model_folder(dataset_name: str, trainer: str, plans: str, configuration: str) -> Path:
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    return Path(get_output_folder(dataset_name, trainer, plans, configuration))


def _postprocessor(spec: str, dataset_json: dict):
    """The post-processing of fused labels: a preset name or a configuration file."""
    config = named_config(spec, dataset_json)
    return lambda image: postprocess_image(image, config)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        raw = find_raw_dataset(args.d)
        dataset_json = load_dataset_json(raw)
    except (FileNotFoundError, RuntimeError) as error:
        raise SystemExit(f"{PROG}: {error}") from None
    name = raw.name.split("_", 1)[1]
    model = model_folder(raw.name, args.tr, args.p, args.c)
    if not model.is_dir():
        raise SystemExit(f"{PROG}: no trained model in {model}; train it (nnUNetv2_train {args.d} {args.c} FOLD -tr "
                         f"{args.tr} -p {args.p}) or name the right -tr/-p/-c")
    folds = [int(f) if f.isdigit() else f for f in args.f]
    table = DomainTable.from_dataset_json(dataset_json, where=str(raw / "dataset.json"))
    round_number = args.round if args.round is not None else 1 + max(
        (e.round for e in table.cases.values() if e.round is not None), default=0)
    work = Path(args.work) if args.work else model / f"pseudolabels_round{round_number}"
    inputs = RoundInputs(raw, dataset_json, work / "fold_predictions", folds, args.absent_agreement)
    candidates = inputs.candidates()
    if not candidates:
        raise SystemExit(f"{PROG}: {raw} has no unlabeled target cases (\"labels\": \"none\" in a target domain)")
    predict_folds(model, folds, {c: inputs.channel_files(c) for c in candidates},
                  {c: inputs.table.domain_of(c) for c in candidates}, inputs.predictions, inputs.file_ending,
                  args.num_parts, args.part_id, torch.device(args.device), args.chk, not args.disable_tta)
    if args.num_parts > 1:
        print(f"{PROG}: part {args.part_id} of {args.num_parts} predicted; once every part is done, run the command "
              f"again without -num_parts/-part_id to select and write dataset {args.o}")
        return
    given = {"top": args.top, "fraction": args.fraction, "threshold": args.threshold}
    try:
        rule = SelectionRule(**given) if any(v is not None for v in given.values()) else SelectionRule(top=50)
    except ValueError as error:
        raise SystemExit(f"{PROG}: {error}") from None
    try:
        postprocess = _postprocessor(args.postprocess, dataset_json) if args.postprocess else None
    except (FileNotFoundError, PostprocessingError) as error:
        raise SystemExit(f"{PROG}: -postprocess: {error}") from None
    try:
        scores = run_selection(inputs, rule, work / "fused", postprocess)
        new = write_round_dataset(inputs, scores, work / "fused", args.o, args.name or f"{name}Round{round_number}",
                                  round_number, raw_root(), args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        raise SystemExit(f"{PROG}: {error}") from None
    report = {**report_json(scores, rule, round_number), "absent_agreement": inputs.absent_agreement}
    write_report(report, work / "report.json")
    plot_scores(scores, work / "scores.png")
    plot_examples(scores, lambda c: inputs.channel_files(c)[0], lambda c: work / "fused" / f"{c}{inputs.file_ending}",
                  work / "examples.png")
    for domain, counts in report["per_domain"].items():
        print(f"{domain}: {counts['selected']} of {counts['candidates']} cases selected ({rule.describe()})")
    print(f"new dataset: {new}\nreport: {work / 'report.json'}")
