"""Measures the phantom's domain gap: source-only floor against the supervised-on-target ceiling.

Two datasets from one seed: the UDA phantom (labeled CT, unlabeled T1/T2) and its fully labeled
twin (the same images, target labels included). The floor is ``nnUNetTrainerSourceOnly`` on the
first; the ceiling is ``nnUNetTrainerUDA`` on the twin, i.e. supervised on every domain with
conditional norms. Both predict every domain's test set; the script prints Dice and HD95 per
domain for both and the gap, and writes ``domain_gap.json`` and ``domain_gap.md``. ``--paired``
builds both datasets with paired modalities (the training images of ``benchmark_aicl.py``'s
default setting; the test sets are the same either way).

    python examples/benchmark_domain_gap.py --work benchmark_output/gap --epochs 80 --iterations 25
"""
from __future__ import annotations

import argparse
import json

from nnunet_uda.pipeline import PhantomSettings, add_run_arguments, phantom_experiment, work_runner

EXPERIMENTS = {  # name: (dataset offset from --dataset, trainer, phantom flags)
    "source only (floor)": (0, "nnUNetTrainerSourceOnly", ()),
    "supervised on target (ceiling)": (1, "nnUNetTrainerUDA", ("--fully_labeled",)),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="benchmark_output/domain_gap")
    parser.add_argument("--dataset", type=int, default=960, help="ids DATASET and DATASET+1 are used")
    parser.add_argument("--paired", action="store_true", help="paired modalities (nnUNetv2_uda_phantom --paired)")
    add_run_arguments(parser, epochs=80, iterations=25)
    return parser.parse_args(argv)


def gap_table(results: dict[str, dict]) -> str:
    floor, ceiling = (results[name] for name in EXPERIMENTS)
    lines = ["| domain | floor Dice | ceiling Dice | gap (Dice) | floor HD95 (mm) | ceiling HD95 (mm) |",
             "|---|---|---|---|---|---|"]
    for domain in floor:
        f, c = floor[domain]["average"], ceiling[domain]["average"]
        lines.append(f"| {domain} | {f['dice']:.3f} | {c['dice']:.3f} | {c['dice'] - f['dice']:+.3f} | "
                     f"{f['hd95']:.1f} | {c['hd95']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    work, run = work_runner(args)
    paired = ("--paired",) if args.paired else ()
    results = {name: phantom_experiment(run, work, args.dataset + offset, trainer, PhantomSettings(
        n_source=args.n_source, n_target=args.n_target, flags=flags + paired))["mean"]
        for name, (offset, trainer, flags) in EXPERIMENTS.items()}
    table = gap_table(results)
    phantom = PhantomSettings()
    settings = (f"phantom {'x'.join(map(str, phantom.shape))}{', paired' if args.paired else ''}, "
                f"{args.n_source} source + {args.n_target} per target "
                f"training cases, {phantom.n_test} test cases per domain; {args.epochs} epochs x {args.iterations} "
                f"iterations, batch 2, ResEnc M 3d_fullres, CPU")
    (work / "domain_gap.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2))
    (work / "domain_gap.md").write_text(f"{settings}\n\n{table}\n")
    print(f"\n{settings}\n\n{table}\n\nTime per step: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in run.timings.items()))


if __name__ == "__main__":
    main()
