"""The nnunet_uda demo: a domain-adaptation experiment on the built-in phantom, on the CPU.

1. ``nnUNetv2_uda_phantom``: a labeled CT-like source and two unlabeled MRI-like targets;
2. ``nnUNetv2_uda_plan_and_preprocess``: nnU-Net planning (ResEnc M) with domains;
3. ``nnUNetv2_train ... -tr nnUNetTrainerUDA -device cpu``: a short training run;
4. ``nnUNetv2_predict``: every domain's test set, each with its own domain's normalisation;
5. ``nnUNetv2_uda_evaluate``: Dice, NSD, HD95 and ASSD per domain and organ, printed as tables.

Run it with ``bash examples/run_demo.sh`` (sets up a virtual environment first) or, in an
environment where nnunet_uda is installed, ``python examples/demo.py``. The short training shows
the workflow, not the method's quality: see examples/benchmark_domain_gap.py for measurements.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from nnunet_uda.evaluation.report import format_markdown
from nnunet_uda.pipeline import PhantomSettings, Runner, add_run_arguments, nnunet_environment, phantom_experiment


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="demo_output", help="folder for nnU-Net's raw, preprocessed and results")
    parser.add_argument("--dataset", type=int, default=990)
    parser.add_argument("--trainer", default="nnUNetTrainerUDA")
    add_run_arguments(parser, epochs=12, iterations=20, phantom_cases=False)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    run = Runner(nnunet_environment(work, args.epochs, args.iterations, args.val_iterations),
                 log=work / "commands.log")
    start = time.time()
    summary = phantom_experiment(run, work, args.dataset, args.trainer,
                                 PhantomSettings(n_source=10, n_target=6, n_test=3))
    print(f"\n{args.trainer} on the phantom ({args.epochs} epochs x {args.iterations} iterations), "
          f"test sets of every domain:\n")
    print(format_markdown(summary))
    print("Time per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in run.timings.items())
          + f"; total {time.time() - start:.0f} s. Commands and their output: {work / 'commands.log'}")
    return summary


if __name__ == "__main__":
    main()
