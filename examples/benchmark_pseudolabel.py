"""Cost of a pseudo-label round over a few hundred small cases: time per case, the share spent
outside nnU-Net's prediction, and peak memory, which must not grow with the number of cases.

Steps: a phantom with ``--n_target`` unlabeled cases per target modality (T1, T2), planned with
``--folds`` folds; every fold of ``nnUNetTrainerSourceOnly`` trained briefly (the model's quality
does not matter here); then ``nnUNetv2_uda_pseudolabel`` in this process, in two parts told apart
by the files they write:

- prediction, until the last fold export: nnU-Net's ``nnUNetPredictor`` once per fold with its
  probabilities (:func:`~nnunet_uda.pseudolabels.fold_predictions.predict_folds`);
- the round itself: scoring (eq. 8), fusion (eq. 9), selection, the new dataset, the report and
  its figures.

:class:`~nnunet_uda.submission.measure.TreeMonitor` samples the memory (proportional set sizes) of this
process and its children (nnU-Net's preprocessing and export workers) every 20 ms.
``memory.png`` plots it against time, with the number of cases scored so far (from the fused
labels' write times): flat while the count grows means memory does not grow with the number of
cases. ``pseudolabel_cost.json`` holds the figures.

    python examples/benchmark_pseudolabel.py --work benchmark_output/pseudolabel_cost
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nnunet_uda.pipeline import PhantomSettings, Runner, nnunet_environment, prepare_phantom, train_folds  # noqa: E402
from nnunet_uda.planning import DEFAULT_PLANS  # noqa: E402
from nnunet_uda.submission.measure import TreeMonitor  # noqa: E402

TRAINER = "nnUNetTrainerSourceOnly"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="benchmark_output/pseudolabel_cost")
    parser.add_argument("--dataset", type=int, default=985)
    parser.add_argument("--n_target", type=int, default=150, help="unlabeled cases per target modality (2 of them)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=3, default=[24, 24, 24])
    return parser.parse_args(argv)


def peak(samples, start: float, end: float) -> float:
    """The largest sample (MB) between two times."""
    return max((s.ram_bytes / 2 ** 20 for s in samples if start <= s.time <= end), default=float("nan"))


def plot_memory(samples, phases: dict[str, tuple[float, float]], scored_at: list[float], path: Path) -> None:
    t0 = samples[0].time
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([s.time - t0 for s in samples], [s.ram_bytes / 2 ** 20 for s in samples], lw=0.8, color="tab:blue")
    ax.set(xlabel="time (s)", ylabel="memory of the process tree, PSS (MB)")
    for name, (start, end) in phases.items():
        ax.axvspan(start - t0, end - t0, alpha=0.08, color="tab:gray")
        ax.text((start + end) / 2 - t0, ax.get_ylim()[1] * 0.97, name, ha="center", va="top", fontsize=8)
    counts = ax.twinx()
    counts.plot([t - t0 for t in sorted(scored_at)], np.arange(1, len(scored_at) + 1), color="tab:orange", lw=1)
    counts.set_ylabel("cases scored", color="tab:orange")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = nnunet_environment(work, epochs=1, iterations=5, val_iterations=1, processes=1)
    run = Runner(env, log=work / "commands.log")
    phantom = PhantomSettings(tuple(args.shape), n_source=8, n_target=args.n_target, n_test=1)
    raw = prepare_phantom(run, args.dataset, phantom, args.folds)
    train_folds(run, raw, args.dataset, TRAINER, range(args.folds))
    os.environ.update(env)  # nnU-Net reads its folders from the environment of this process
    from nnunet_uda.cli import pseudolabel

    round_work = work / "round"
    shutil.rmtree(round_work, ignore_errors=True)  # every fold predicts anew: the round reuses what it finds
    start = time.time()
    with TreeMonitor(os.getpid(), interval=0.02) as monitor:
        pseudolabel.main(["-d", str(args.dataset), "-o", str(args.dataset + 1), "-tr", TRAINER, "-p", DEFAULT_PLANS,
                          "-f", *map(str, range(args.folds)), "--top", "50", "-work", str(round_work),
                          "-device", "cpu", "--disable_tta", "--overwrite"])
    end = time.time()
    samples = monitor.samples
    cases = 2 * args.n_target
    predicted_until = max(p.stat().st_mtime for p in (round_work / "fold_predictions").rglob("*.nii.gz"))
    scored_at = [p.stat().st_mtime for p in (round_work / "fused").glob("*.nii.gz")]
    first, last = np.quantile(scored_at, [0.1, 0.9])
    figures = {
        "cases": cases, "folds": args.folds, "shape": args.shape,
        "total_s": end - start, "prediction_s": predicted_until - start,
        "outside_prediction_s": end - predicted_until,
        "outside_prediction_share": (end - predicted_until) / (end - start),
        "prediction_s_per_case_and_fold": (predicted_until - start) / (cases * args.folds),
        "round_s_per_case": (end - predicted_until) / cases,
        "peak_mb_prediction": peak(samples, start, predicted_until),
        "peak_mb_round": peak(samples, predicted_until, end),
        "peak_mb_first_10pct_scored": peak(samples, predicted_until, first),
        "peak_mb_last_10pct_scored": peak(samples, last, max(scored_at)),
    }
    (work / "pseudolabel_cost.json").write_text(json.dumps(figures, indent=2))
    plot_memory(samples, {"prediction": (start, predicted_until), "round": (predicted_until, end)}, scored_at,
                work / "memory.png")
    print(f"\n{cases} cases x {args.folds} folds, {'x'.join(map(str, args.shape))} voxels, CPU:")
    print(f"  total {figures['total_s']:.1f} s; nnU-Net prediction {figures['prediction_s']:.1f} s "
          f"({figures['prediction_s_per_case_and_fold']:.3f} s per case and fold); outside it "
          f"{figures['outside_prediction_s']:.1f} s ({figures['outside_prediction_share']:.1%}), "
          f"{figures['round_s_per_case'] * 1000:.1f} ms per case")
    print(f"  peak memory (process tree, PSS): prediction {figures['peak_mb_prediction']:.0f} MB, round "
          f"{figures['peak_mb_round']:.0f} MB; while scoring the first 10% of cases {figures['peak_mb_first_10pct_scored']:.0f}"
          f" MB, the last 10% {figures['peak_mb_last_10pct_scored']:.0f} MB")
    print(f"pseudolabel_cost.json and memory.png written to {work}")
    return figures


if __name__ == "__main__":
    main()
