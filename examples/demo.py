"""The nnunet_uda demo: a domain-adaptation experiment on the built-in phantom, on the CPU.

1. ``nnUNetv2_uda_phantom``: a labeled CT-like source and two unlabeled MRI-like targets;
2. ``nnUNetv2_uda_plan_and_preprocess``: nnU-Net planning (ResEnc M) with domains;
3. ``nnUNetv2_train ... -tr nnUNetTrainerUDA -device cpu``: a short training run;
4. ``nnUNetv2_predict``: every domain's test set, each with its own domain's normalisation;
5. ``nnUNetv2_uda_evaluate``: Dice, NSD, HD95 and ASSD per domain and organ, printed as tables.

Run it with ``bash examples/run_demo.sh`` (sets up a virtual environment first) or, in an
environment where nnunet_uda is installed, ``python examples/demo.py``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from nnunet_uda.data.raw import dataset_folder_name
from nnunet_uda.evaluation.report import format_markdown
from nnunet_uda.pipeline import Runner, command, nnunet_environment, predict_test_sets
from nnunet_uda.planning import DEFAULT_PLANS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="demo_output", help="folder for nnU-Net's raw, preprocessed and results")
    parser.add_argument("--dataset", type=int, default=990)
    parser.add_argument("--trainer", default="nnUNetTrainerUDA")
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 32, 32], help="phantom volume size (voxels)")
    parser.add_argument("--n_source", type=int, default=10)
    parser.add_argument("--n_target", type=int, default=6)
    parser.add_argument("--n_test", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--val_iterations", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep an existing work folder")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work).resolve()
    if work.exists() and not args.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    run = Runner(nnunet_environment(work, args.epochs, args.iterations, args.val_iterations),
                 log=work / "commands.log")
    start = time.time()
    d = str(args.dataset)
    run("phantom", command("nnUNetv2_uda_phantom"), "-d", d, "--shape", *map(str, args.shape),
        "--n_source", str(args.n_source), "--n_target", str(args.n_target), "--n_test", str(args.n_test),
        "--overwrite")
    run("plan and preprocess", command("nnUNetv2_uda_plan_and_preprocess"), "-d", d, "-bs", "2",
        "-folds", str(args.folds))
    run("train", command("nnUNetv2_train"), d, "3d_fullres", "0", "-tr", args.trainer, "-p", DEFAULT_PLANS,
        "-device", "cpu")
    raw = work / "nnUNet_raw" / dataset_folder_name(args.dataset, "UDAPhantom")
    predictions = predict_test_sets(run, raw, args.dataset, args.trainer, work / "predictions", work)
    run("evaluate", command("nnUNetv2_uda_evaluate"), "-ref", str(raw / "labelsTs"), "-pred", str(predictions),
        "-d", d, "-o", str(work / "evaluation"))
    with open(work / "evaluation" / "summary.json") as f:
        summary = json.load(f)
    print(f"\n{args.trainer} on the phantom, test sets of every domain:\n")
    print(format_markdown(summary))
    print("Time per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in run.timings.items())
          + f"; total {time.time() - start:.0f} s. Commands and their output: {work / 'commands.log'}")
    return summary


if __name__ == "__main__":
    main()
