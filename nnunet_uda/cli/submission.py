"""nnUNetv2_uda_submission and nnUNetv2_uda_submission_run: a challenge submission folder, and a local run of it.

Examples::

    nnUNetv2_uda_submission -d 500 -tr nnUNetTrainerUDA -o submission -postprocess flare
    nnUNetv2_uda_submission -d 500 -tr nnUNetTrainerUDA -f 0 -domain T2 -o submission_T2 --disable_tta
    nnUNetv2_uda_submission_run -s submission -i validation_images -o validation_predictions

The first writes a folder with the exported model, ``predict.sh`` (``/workspace/inputs/<case>_0000.nii.gz`` to
``/workspace/outputs/<case>.nii.gz``), a Dockerfile, the post-processing rules and a README; the second runs its
``predict.sh`` once per case, like the challenge, and writes each case's wall time and peak RAM and GPU memory to a
CSV. See :mod:`nnunet_uda.submission`.
"""
from __future__ import annotations

import argparse
import statistics
from typing import Sequence

from nnunet_uda.planning import DEFAULT_PLANS
from nnunet_uda.submission.build import build_submission
from nnunet_uda.submission.challenge import SubmissionError
from nnunet_uda.export import ExportError, resolve_dataset
from nnunet_uda.submission.model import DEFAULT_CHECKPOINT, DEFAULT_FOLDS, ModelSpec
from nnunet_uda.submission.runner import RunReport, run_submission

PROG = "nnUNetv2_uda_submission"
RUN_PROG = "nnUNetv2_uda_submission_run"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Write a challenge submission folder (exported model, predict.sh, Dockerfile, "
                               "post-processing rules, README) for a trained model.")
    parser.add_argument("-d", required=True, help="dataset id or name the model was trained on")
    parser.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-tr", required=True, help="trainer of the model, e.g. nnUNetTrainerUDA")
    parser.add_argument("-p", default=DEFAULT_PLANS, help=f"plans identifier (default {DEFAULT_PLANS})")
    parser.add_argument("-f", nargs="+", default=list(DEFAULT_FOLDS),
                        help="folds whose predictions are averaged (default 0 1 2 3 4, as nnUNetv2_predict); each "
                             "must be trained")
    parser.add_argument("-chk", default=DEFAULT_CHECKPOINT, help=f"checkpoint of each fold (default {DEFAULT_CHECKPOINT})")
    parser.add_argument("-postprocess", default=None,
                        help="post-processing after prediction: a configuration JSON of nnUNetv2_uda_postprocess or "
                             "the preset 'flare' (default: none)")
    parser.add_argument("-domain", default=None,
                        help="for a conditional-norm model, the domain whose norms are folded into the exported "
                             "plain nnU-Net model (default: the one stored with its weights, the first target domain)")
    parser.add_argument("--disable_tta", action="store_true", help="no test-time mirroring (faster)")
    parser.add_argument("-o", required=True, help="the submission folder to write (written when complete)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        spec = ModelSpec(resolve_dataset(args.d), args.c, args.tr, args.p, tuple(args.f), args.chk)
        output = build_submission(spec, args.o, args.domain, args.postprocess, args.disable_tta, args.overwrite)
    except (FileNotFoundError, SubmissionError, ExportError) as error:
        raise SystemExit(f"{PROG}: {error}") from None
    print(f"submission for {spec.dataset}/{spec.identifier} (folds {' '.join(spec.folds)}) written to {output}\n"
          f"try it: {RUN_PROG} -s {output} -i INPUTS -o OUTPUTS; build the image: docker build -t TEAM {output}")


def build_run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=RUN_PROG, description="Run a submission folder's predict.sh one case at a time, like the challenge, "
                                   "and write each case's wall time, peak RAM and GPU memory and the areas under their "
                                   "curves (FLARE's AUC_RAM_Time, AUC_GPU_Time) to a CSV.")
    parser.add_argument("-s", required=True, help="submission folder (written by nnUNetv2_uda_submission)")
    parser.add_argument("-i", required=True, help="folder of <case>_0000.nii.gz images")
    parser.add_argument("-o", required=True, help="folder for the <case>.nii.gz label maps")
    parser.add_argument("--csv", default=None, help="CSV of the measurements (default: OUTPUTS/efficiency.csv); "
                                                    "the case logs go to logs/ beside it")
    parser.add_argument("-interval", type=float, default=0.1,
                        help="seconds between memory samples (default 0.1, FLARE's sampling interval)")
    return parser


def run_main(argv: Sequence[str] | None = None) -> None:
    args = build_run_parser().parse_args(argv)
    if args.interval <= 0:
        raise SystemExit(f"{RUN_PROG}: -interval must be a positive number of seconds, got {args.interval}")
    try:
        report = run_submission(args.s, args.i, args.o, args.csv, args.interval)
    except SubmissionError as error:
        raise SystemExit(f"{RUN_PROG}: {error}") from None
    print(summary(report))
    if report.failed:
        raise SystemExit(f"{RUN_PROG}: {len(report.failed)} of {len(report.results)} cases failed "
                         f"({', '.join(report.failed)}); see their logs in {report.logs}")


def summary(report: RunReport) -> str:
    """Wall time and memory over the cases, and where the CSV is."""
    measurements = [r.measurement for r in report.results]
    times = [m.wall_time_s for m in measurements]
    gpu = [m.peak_gpu_mb for m in measurements if m.peak_gpu_mb is not None]
    return (f"{len(measurements)} cases: wall time median {statistics.median(times):.1f} s, max {max(times):.1f} s; "
            f"peak RAM {max(m.peak_ram_mb for m in measurements):.0f} MB; "
            + (f"peak GPU memory {max(gpu):.0f} MB" if gpu else "no GPU") + f"\nmeasurements: {report.csv}")


if __name__ == "__main__":
    main()
