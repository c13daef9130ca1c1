"""AICL on the phantom: target-domain Dice and HD95 against its baselines, ablations and the ceiling.

The setting follows the paper's (section 3.1): one subject per index in every modality (paired,
``--unpaired`` for different subjects), partial labels (CT annotates every organ but the
gallbladder, T1 only the gallbladder, T2 nothing) and initial pseudo labels for every class without
manual labels, registration-like (``reg``, the paper's REG) or strongly shifted (``sreg``, S-REG).
Per setting, through nnU-Net's commands:

- initial pseudo labels: the pseudo-labeled target training cases scored against their truth;
- pseudo-label only: ``nnUNetTrainerUDA_Adam`` (conditional norms, trained on manual and initial
  pseudo labels alike with AICL's optimiser: the paper's CIN-seg);
- AICL without l_fpc and l_csc: ``nnUNetTrainerAICL_noFPC_noCSC``;
- AICL: ``nnUNetTrainerAICL``;

and with ``--methods``, the other variants: l_csc holding the source modality's maps
(``nnUNetTrainerAICL_SourceAnchors``), and under nnU-Net's SGD pseudo-label only
(``nnUNetTrainerUDA``), the ablation (``nnUNetTrainerAICL_SGD_noFPC_noCSC``), eq. 5 as printed
(``nnUNetTrainerAICL_SGD_Eq5``), its InfoNCE form (``nnUNetTrainerAICL_SGD_InfoNCECSC``) and
that with the soft Dice phi (``nnUNetTrainerAICL_SGD_DiceCSC``).

The floor (``nnUNetTrainerSourceOnly``) and the ceiling (supervised on target) come from the
domain-gap benchmark (``--gap``, its ``domain_gap.json``; run ``examples/benchmark_domain_gap.py``
first with the same ``--epochs``, ``--iterations``, case counts and ``--paired`` unless
``--unpaired``): the phantom's images do not depend on its label options, so the floor's and
ceiling's test sets and training images are these.
Each method's share of the floor-to-ceiling gap closed is (Dice - floor) / (ceiling - floor), on
the target domains. The gap file is read once the trainings are done, so both benchmarks can run at
the same time. Finished trainings are reused, so an interrupted run resumes. Writes
``aicl_reg.json``/``.md`` and ``aicl_sreg.json``/``.md`` to ``--work``, one per setting run.

    python examples/benchmark_domain_gap.py --work benchmark_output/domain_gap --paired
    python examples/benchmark_aicl.py --work benchmark_output/aicl --gap benchmark_output/domain_gap/domain_gap.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from nnunet_uda.benchmarking import gap_closed, target_mean
from nnunet_uda.pipeline import (PhantomSettings, add_run_arguments, initial_label_quality, prepare_phantom,
                                 train_and_evaluate, work_runner)

METHODS = {"pseudo-label only (CIN-seg), nnU-Net's SGD": "nnUNetTrainerUDA",
           "AICL w/o l_fpc, l_csc, nnU-Net's SGD": "nnUNetTrainerAICL_SGD_noFPC_noCSC",
           "AICL, nnU-Net's SGD, eq. 5 as printed": "nnUNetTrainerAICL_SGD_Eq5",
           "AICL, nnU-Net's SGD, l_csc in InfoNCE form": "nnUNetTrainerAICL_SGD_InfoNCECSC",
           "AICL, nnU-Net's SGD, l_csc InfoNCE with soft Dice phi": "nnUNetTrainerAICL_SGD_DiceCSC",
           "pseudo-label only (CIN-seg)": "nnUNetTrainerUDA_Adam",
           "AICL w/o l_fpc, l_csc": "nnUNetTrainerAICL_noFPC_noCSC",
           "AICL, source maps held in l_csc": "nnUNetTrainerAICL_SourceAnchors",
           "AICL": "nnUNetTrainerAICL"}
DEFAULT_METHODS = ("nnUNetTrainerUDA_Adam", "nnUNetTrainerAICL_noFPC_noCSC", "nnUNetTrainerAICL")
TARGETS = ("T1", "T2")
PSEUDO_KINDS = ("reg", "sreg")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="benchmark_output/aicl")
    parser.add_argument("--gap", required=True, help="domain_gap.json of examples/benchmark_domain_gap.py")
    parser.add_argument("--dataset", type=int, default=970, help="id of the REG setting; S-REG is DATASET+1")
    parser.add_argument("--pseudo", nargs="+", default=list(PSEUDO_KINDS), choices=PSEUDO_KINDS)
    parser.add_argument("--unpaired", action="store_true", help="different subjects per modality (no twin batches)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS.values()), default=list(DEFAULT_METHODS),
                        help="the trainers to run (default: %(default)s)")
    add_run_arguments(parser, epochs=80, iterations=25)
    return parser.parse_args(argv)


def tables(setting: str, rows: dict[str, dict], floor: float, ceiling: float) -> str:
    organs = [o for o in next(iter(rows.values()))["T1"] if o != "average"]
    head = ("| method | " + " | ".join(f"{d} Dice | {d} HD95" for d in TARGETS) + " | gap closed | "
            + " | ".join(organs) + " |")
    lines = [f"**{setting}** (target domains; per-organ Dice averaged over T1 and T2)", "", head,
             "|" + "---|" * (2 + 2 * len(TARGETS) + len(organs))]
    for name, means in rows.items():
        closed = gap_closed(target_mean(means, TARGETS), floor, ceiling)
        cells = [f"{means[d]['average']['dice']:.3f} | {means[d]['average']['hd95']:.1f}" for d in TARGETS]
        organ_cells = [f"{target_mean(means, TARGETS, organ=o):.3f}" for o in organs]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {closed} | " + " | ".join(organ_cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    work, run = work_runner(args)
    measured = {}
    for kind in args.pseudo:
        dataset_id = args.dataset + PSEUDO_KINDS.index(kind)
        flags = ("--partial_labels", "--pseudo_labels", kind, *(() if args.unpaired else ("--paired",)))
        raw = prepare_phantom(run, dataset_id, PhantomSettings(n_source=args.n_source, n_target=args.n_target,
                                                               flags=flags))
        rows = {f"initial pseudo labels ({kind.upper()})": initial_label_quality(raw)}
        for name, trainer in METHODS.items():
            if trainer in args.methods:
                rows[name] = train_and_evaluate(run, work, raw, dataset_id, trainer)["mean"]
        measured[kind] = rows
    gap_file = Path(args.gap)
    if not gap_file.is_file():
        raise SystemExit(f"{gap_file} not found: run examples/benchmark_domain_gap.py with the same --epochs, "
                         f"--iterations and case counts, then this command again (finished trainings are reused)")
    gap = json.loads(gap_file.read_text())["results"]
    floor_name, ceiling_name = "source only (floor)", "supervised on target (ceiling)"
    floor, ceiling = target_mean(gap[floor_name], TARGETS), target_mean(gap[ceiling_name], TARGETS)
    results = {kind: {floor_name: gap[floor_name], **rows, ceiling_name: gap[ceiling_name]}
               for kind, rows in measured.items()}
    settings = (f"phantom 24x24x24, {'unpaired' if args.unpaired else 'paired'}, partial labels, "
                f"{args.n_source} CT + {args.n_target} per target training cases, "
                f"5 test cases per domain; {args.epochs} epochs x {args.iterations} iterations, batch 2, ResEnc M "
                f"3d_fullres, CPU")
    text = []
    for kind, rows in results.items():
        text.append(tables(f"{kind.upper()} initial pseudo labels", rows, floor, ceiling))
        (work / f"aicl_{kind}.json").write_text(json.dumps({"settings": settings, "results": rows}, indent=2))
        (work / f"aicl_{kind}.md").write_text(settings + "\n\n" + text[-1] + "\n")
    report = settings + "\n\n" + "\n\n".join(text) + "\n"
    print("\n" + report + "\nTime per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in run.timings.items()))


if __name__ == "__main__":
    main()
