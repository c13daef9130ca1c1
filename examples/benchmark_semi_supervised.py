"""Semi-supervised benchmark on the phantom: the floor, a method's Table 2 rows and the ceiling.

For each labeled fraction (DVCL's 10 % and 20 %, DACL's 5 % and 10 % by default): a CT-only phantom with that
fraction of its training cases labeled (``nnUNetv2_uda_phantom --semi_supervised``), and its fully labeled twin
(same images, every label). Trained with nnU-Net's commands on fold ``all`` (every labeled case; the test set
scores):

- floor: ``nnUNetTrainerLabeledOnly`` on the labeled cases alone;
- ``--method dvcl``: ``nnUNetTrainerCPS_noCPS`` (the batch split alone), ``nnUNetTrainerCPS``,
  ``nnUNetTrainerDVCL_HqCL``, ``nnUNetTrainerDVCL_noNPS_noQDS``, ``nnUNetTrainerDVCL_noQDS``,
  ``nnUNetTrainerDVCL`` (DVCL Table 2, rows I-V);
- ``--method dacl``: ``nnUNetTrainerDACL_CPS``, ``_PCL``, ``_DA``, ``_MS``, ``_Bank``, ``nnUNetTrainerDACL`` (DACL
  Table 2, rows I-VI) and the alternatives ``_PrintedLoss``, ``_Region``, ``_PaperSGD``;
- ceiling: ``nnUNetTrainerLabeledOnly`` on the fully labeled twin.

``--repeats N`` trains every row N times (nnU-Net draws a new initialisation and new batches each time; repeats
after the first keep their models in ``nnUNet_results_repeat<k>`` and outputs in ``repeat<k>``), so that a row's
spread can be told from a method's effect.

Prints and writes ``summary.md``: mean Dice and NSD of the test set per trainer (with their standard deviation
over the repeats), the share of the floor-to-ceiling gap each closes, Dice per organ, and for trainers with a
feature head the cluster scores of their projected voxel features on the test set (``nnUNetv2_uda_embeddings``:
silhouette, Davies-Bouldin, V-measure; DACL's Fig. 1b).
An interrupted run resumes (finished trainings are reused). Results: docs/methods/dvcl.md#measured,
docs/methods/dacl.md#measured.

    python examples/benchmark_semi_supervised.py --work benchmark_output/semi_supervised
    python examples/benchmark_semi_supervised.py --method dacl --work benchmark_output/semi_supervised
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from nnunet_uda.benchmarking import gap_closed
from nnunet_uda.pipeline import PhantomSettings, Runner, add_run_arguments, command, final_checkpoint, \
    prepare_phantom, train_and_evaluate, work_runner

FLOOR = "nnUNetTrainerLabeledOnly"
ROWS = {"dvcl": ("nnUNetTrainerCPS_noCPS", "nnUNetTrainerCPS", "nnUNetTrainerDVCL_HqCL",
                 "nnUNetTrainerDVCL_noNPS_noQDS", "nnUNetTrainerDVCL_noQDS", "nnUNetTrainerDVCL"),
        "dacl": ("nnUNetTrainerDACL_CPS", "nnUNetTrainerDACL_PCL", "nnUNetTrainerDACL_DA", "nnUNetTrainerDACL_MS",
                 "nnUNetTrainerDACL_Bank", "nnUNetTrainerDACL", "nnUNetTrainerDACL_PrintedLoss",
                 "nnUNetTrainerDACL_Region", "nnUNetTrainerDACL_PaperSGD")}
FRACTIONS = {"dvcl": (0.1, 0.2), "dacl": (0.05, 0.1)}
FOLDS = ("all",)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="benchmark_output/semi_supervised")
    parser.add_argument("--dataset", type=int, default=960, help="first dataset id (two per fraction)")
    parser.add_argument("--method", choices=sorted(ROWS), default="dvcl", help="whose Table 2 rows and fractions")
    parser.add_argument("--fractions", type=float, nargs="+", help="labeled fractions (default: the method's)")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 32, 32))
    parser.add_argument("--trainers", nargs="*", help="the trainers between floor and ceiling (default: the rows; "
                                                      "none: floor and ceiling alone)")
    parser.add_argument("--repeats", type=int, default=1, help="trainings of every row (mean and spread)")
    parser.add_argument("--n_test", type=int, default=5, help="test cases of the phantom")
    parser.add_argument("--phantom", nargs=argparse.REMAINDER, default=[],
                        help="further nnUNetv2_uda_phantom options, last (e.g. --organs liver aorta --organ_scale 1.5)")
    add_run_arguments(parser, epochs=40, iterations=50)
    parser.set_defaults(n_source=40)
    args = parser.parse_args(argv)
    args.fractions = args.fractions or FRACTIONS[args.method]
    args.trainers = ROWS[args.method] if args.trainers is None else args.trainers
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    work, run = work_runner(args)
    repeats = [repeat(run, work, k) for k in range(args.repeats)]
    sections = []
    for i, fraction in enumerate(args.fractions):
        semi, twin = args.dataset + 2 * i, args.dataset + 2 * i + 1
        flags = ("--semi_supervised", str(fraction), *args.phantom)
        settings = dict(shape=tuple(args.shape), n_source=args.n_source, n_test=args.n_test)
        raw = prepare_phantom(run, semi, PhantomSettings(**settings, flags=flags), folds=2)
        raw_twin = prepare_phantom(run, twin, PhantomSettings(**settings, flags=(*flags, "--fully_labeled")), folds=2)
        rows = {"floor": (raw, semi, FLOOR), **{t: (raw, semi, t) for t in args.trainers},
                "ceiling": (raw_twin, twin, FLOOR)}
        results = {name: [train_and_evaluate(r, w, *row, FOLDS) for r, w in repeats] for name, row in rows.items()}
        clusters = {t: cluster_scores(run, work, raw, semi, t) for t in args.trainers}
        sections.append(section(fraction, args, results, clusters))
    text = "\n".join(sections)
    (work / "summary.md").write_text(text)
    print("\n" + text)
    return text


def repeat(run: Runner, work: Path, k: int) -> tuple[Runner, Path]:
    """The runner and output folder of the ``k``-th training of every row: the first in ``work`` itself, the
    others with results and outputs of their own beside the shared raw and preprocessed data."""
    if k == 0:
        return run, work
    env = {**run.env, "nnUNet_results": str(work / f"nnUNet_results_repeat{k}")}
    folder = work / f"repeat{k}"
    folder.mkdir(exist_ok=True)
    return Runner(env, log=run.log), folder


def cluster_scores(run: Runner, work: Path, raw: Path, dataset: int, trainer: str) -> dict | None:
    """The embedding command's scores of a trainer with a feature head (None without one); reused while newer
    than the checkpoint."""
    from nnunet_uda.training import TRAINERS

    if getattr(TRAINERS.get(trainer), "projection_dim", None) is None:
        return None
    scores = work / f"embeddings_{dataset}_{trainer}.json"
    if not scores.is_file() or scores.stat().st_mtime < final_checkpoint(run, raw, trainer, "all").stat().st_mtime:
        run("embeddings", command("nnUNetv2_uda_embeddings"), "-d", str(dataset), "-tr", trainer, "-f", "all",
            "-n", "5", "-o", str(scores.with_suffix(".png")))
    return json.loads(scores.read_text())


def section(fraction: float, args, results: dict[str, list[dict]], clusters: dict[str, dict | None]) -> str:
    """The tables of one labeled fraction: means over the repeats (with their standard deviation), gap closed, Dice
    per organ; cluster scores (of the first repeat)."""
    means = {name: [r["mean"]["CT"] for r in runs] for name, runs in results.items()}
    dice = {name: np.array([m["average"]["dice"] for m in runs]) for name, runs in means.items()}
    nsd = {name: np.array([m["average"]["nsd"] for m in runs]) for name, runs in means.items()}
    floor, ceiling = dice["floor"].mean(), dice["ceiling"].mean()
    organs = [o for o in means["floor"][0] if o != "average"]
    spread = " (mean +- standard deviation)" if args.repeats > 1 else ""
    lines = [f"## {fraction:.0%} labeled ({round(fraction * args.n_source)} of {args.n_source} training cases)", "",
             f"{args.epochs} epochs x {args.iterations} iterations, fold all, test set of {args.n_test} cases, "
             f"{args.repeats} training(s) per row{spread}; floor-to-ceiling gap {ceiling - floor:+.3f} Dice.", "",
             "| trainer | Dice | NSD | gap closed | " + " | ".join(organs) + " |",
             "|---|---|---|---|" + "---|" * len(organs)]
    for name, runs in means.items():
        cells = [_mean(dice[name]), _mean(nsd[name]), gap_closed(dice[name].mean(), floor, ceiling)]
        cells += [f"{np.mean([m[o]['dice'] for m in runs]):.2f}" for o in organs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    scored = {name: c for name, c in clusters.items() if c is not None}
    if scored:
        lines += ["", "Projected voxel features of the test set (network A's head, nnUNetv2_uda_embeddings):", "",
                  "| trainer | silhouette | Davies-Bouldin | V-measure |", "|---|---|---|---|"]
        lines += [f"| {name} | " + " | ".join(_score(c[k]) for k in ("silhouette", "davies_bouldin", "v_measure"))
                  + " |" for name, c in scored.items()]
    return "\n".join(lines) + "\n"


def _mean(values: np.ndarray) -> str:
    return f"{values.mean():.3f}" + (f" +- {values.std(ddof=1):.3f}" if len(values) > 1 else "")


def _score(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
