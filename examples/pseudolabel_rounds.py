"""The self-training pipeline of FLARE 2024 Task 3 (section 2.3) on the phantom: round 0, selection,
round 1, evaluation.

Every step is a real command:

1. the phantom (labeled CT; unlabeled T1 and T2 training cases; a test set per domain), planned
   with ``--folds`` domain-aware folds; or, with ``--semi_supervised FRACTION``, CT alone with that
   fraction of its training cases labeled and the rest the target;
2. round 0: every fold of ``--round0_trainer`` (default ``nnUNetTrainerSourceOnly``, nnU-Net on the
   labeled CT, or ``nnUNetTrainerSelfTraining`` on the labeled cases when semi-supervised). The
   paper's round 0 is nnU-Net trained on CT translated into each MRI sequence; a round 0 on CT
   alone sees almost nothing of the MRI and cannot stand in for it, so the semi-supervised setting
   is the one here whose round 0 sees its target;
3. ``nnUNetv2_uda_pseudolabel``: each fold predicts every unlabeled target case, the cases are
   ranked per modality by fold consistency (eq. 8), the ``--top`` best get their fused labels
   (eq. 9) in a new dataset;
4. round 1: every fold of ``nnUNetTrainerSelfTraining`` (nnU-Net's network on source and pseudo
   labels alike) on that dataset;
5. each round's fold ensemble predicts the test sets: Dice and NSD per target domain; and the
   selection is scored against the phantom's true labels (``labelsTr_reference``): the true Dice
   of the selected and the rejected pseudo labels, the share of the selected cases that are among
   the ``--top`` truly best (precision), and the rank correlation of score and true Dice.

The selection is scored twice: as the round ran (``--absent_agreement``) and with eq. 8's other
convention for organs all folds miss, from the same fold predictions.

Writes ``rounds.json``, ``rounds.md`` and ``selection.png`` (score against true Dice per target
modality) to ``--work``; the round's own report (``report.json``, ``scores.png``, ``examples.png``)
is in ``--work/pseudolabels_round1``. Finished trainings and predictions are reused.

    python examples/pseudolabel_rounds.py --work benchmark_output/rounds
    python examples/pseudolabel_rounds.py --work benchmark_output/rounds_semi --semi_supervised 0.25 \
        --n_source 24 --top 9
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from nnunet_uda.data.raw import load_dataset_json  # noqa: E402
from nnunet_uda.domains import DomainTable  # noqa: E402
from nnunet_uda.evaluation.report import evaluate_folder  # noqa: E402
from nnunet_uda.pipeline import (PhantomSettings, add_run_arguments, prepare_phantom,  # noqa: E402
                                 self_training_round, train_and_evaluate, work_runner)
from nnunet_uda.pseudolabels.rounds import RoundInputs, score_case  # noqa: E402
from nnunet_uda.pseudolabels.selection import SelectionRule, select_cases  # noqa: E402

ROUND_TRAINER = "nnUNetTrainerSelfTraining"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="benchmark_output/rounds")
    parser.add_argument("--dataset", type=int, default=980, help="round 0's dataset id; round 1's is one more")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--top", type=int, default=8, help="pseudo-labeled cases selected per target modality")
    parser.add_argument("--round0_trainer", help="default: nnUNetTrainerSourceOnly, or with --semi_supervised "
                                                 "nnUNetTrainerSelfTraining (nnU-Net on the labeled cases)")
    parser.add_argument("--absent_agreement", type=float, default=1.0, choices=[0.0, 1.0],
                        help="eq. 8's score for folds that both miss an organ (nnUNetv2_uda_pseudolabel); the "
                             "selection is also scored with the other value, from the same fold predictions")
    parser.add_argument("--semi_supervised", type=float, metavar="FRACTION",
                        help="CT alone, this fraction of its training cases labeled, the rest the target")
    parser.add_argument("--shape", type=int, nargs=3, default=[24, 24, 24])
    parser.add_argument("--n_test", type=int, default=5, help="test cases per domain")
    add_run_arguments(parser, epochs=80, iterations=25)
    return parser.parse_args(argv)


def target_means(summary: dict, targets) -> dict[str, dict[str, float]]:
    return {d: {m: summary["mean"][d]["average"][m] for m in ("dice", "nsd", "hd95")} for d in targets}


def true_fused_dice(raw: Path, round_work: Path, cases) -> dict[str, float]:
    """Mean organ Dice of every candidate's fused pseudo label against the phantom's true labels."""
    dataset_json = load_dataset_json(raw)
    references = round_work / "true_labels"
    references.mkdir(exist_ok=True)
    for case in cases:
        link = references / f"{case}{dataset_json['file_ending']}"
        if not link.exists():
            os.symlink((raw / "labelsTr_reference" / link.name).resolve(), link)
    truth = evaluate_folder(references, round_work / "fused", dataset_json, num_processes=1)
    return {c["case"]: float(np.mean([m["dice"] for m in c["metrics"].values()])) for c in truth["cases"]}


def rescored(raw: Path, round_work: Path, folds: list[int], absent_agreement: float, top: int) -> dict:
    """The round's candidates scored again from its fold predictions with another ``absent_agreement``
    and selected by the same rule, in the report's form."""
    inputs = RoundInputs(raw, load_dataset_json(raw), round_work / "fold_predictions", folds, absent_agreement)
    scores = {c: score_case(inputs, c)[0] for c in inputs.candidates()}
    chosen = select_cases({c: s.score for c, s in scores.items()}, {c: s.domain for c, s in scores.items()},
                          SelectionRule(top=top))
    return {c: {"domain": s.domain, "score": s.score, "selected": chosen[c]} for c, s in scores.items()}


def selection_quality(candidates: dict, true_dice: dict[str, float], top: int, targets) -> dict:
    """Per target modality: the true Dice of the selected and the rejected fused labels, the share of
    the selected among the ``top`` truly best (precision), and the rank correlation of score and
    true Dice; ``candidates`` as the report's ``cases``."""
    quality = {}
    for domain in targets:
        cases = [c for c, r in candidates.items() if r["domain"] == domain]
        selected = [c for c in cases if candidates[c]["selected"]]
        rejected = [c for c in cases if not candidates[c]["selected"]]
        truly_best = set(sorted(cases, key=lambda c: -true_dice[c])[:top])
        rho = spearmanr([candidates[c]["score"] for c in cases], [true_dice[c] for c in cases])[0]
        quality[domain] = {
            "candidates": len(cases), "selected": len(selected),
            "true_dice_selected": float(np.mean([true_dice[c] for c in selected])) if selected else None,
            "true_dice_rejected": float(np.mean([true_dice[c] for c in rejected])) if rejected else None,
            "precision": len(truly_best & set(selected)) / len(selected) if selected else None,
            "spearman": None if np.isnan(rho) else float(rho),
            "cases": {c: {"score": candidates[c]["score"], "true_dice": true_dice[c],
                          "selected": candidates[c]["selected"]} for c in cases}}
    return quality


def plot_selection(quality: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, len(quality), figsize=(4.5 * len(quality), 4), squeeze=False)
    for ax, (domain, q) in zip(axes[0], quality.items()):
        for selected, colour, label in ((True, "tab:green", "selected"), (False, "tab:gray", "rejected")):
            points = [(v["score"], v["true_dice"]) for v in q["cases"].values() if v["selected"] == selected]
            if points:
                ax.scatter(*zip(*points), c=colour, label=label, s=25)
        rho = "n/a" if q["spearman"] is None else f"{q['spearman']:.2f}"
        ax.set(title=f"{domain}: Spearman {rho}", xlabel="fold consistency (eq. 8)", ylabel="true Dice of fused label")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(rounds: dict, qualities: dict[str, dict], settings: str, targets) -> str:
    lines = [f"Self-training on the phantom ({settings})", "",
             "| round | trainer | " + " | ".join(f"{d} Dice | {d} NSD" for d in targets) + " | target mean Dice |",
             "|" + "---|" * (3 + 2 * len(targets))]
    for name, r in rounds.items():
        cells = " | ".join(f"{r['targets'][d]['dice']:.3f} | {r['targets'][d]['nsd']:.3f}" for d in targets)
        mean = np.mean([r["targets"][d]["dice"] for d in targets])
        lines.append(f"| {name} | {r['trainer']} | {cells} | {mean:.3f} |")
    lines += ["", "| eq. 8 absent agreement | modality | selected / candidates | true Dice selected | "
              "true Dice rejected | precision | Spearman (score, true Dice) |", "|---|---|---|---|---|---|---|"]

    def fmt(x):
        return "n/a" if x is None else f"{x:.3f}"
    for convention, quality in qualities.items():
        for domain, q in quality.items():
            lines.append(f"| {convention} | {domain} | {q['selected']} / {q['candidates']} | "
                         f"{fmt(q['true_dice_selected'])} | {fmt(q['true_dice_rejected'])} | {fmt(q['precision'])} | "
                         f"{fmt(q['spearman'])} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.round0_trainer = args.round0_trainer or (ROUND_TRAINER if args.semi_supervised else "nnUNetTrainerSourceOnly")
    work, run = work_runner(args)
    folds = list(range(args.folds))
    semi = ("--semi_supervised", str(args.semi_supervised)) if args.semi_supervised else ()
    phantom = PhantomSettings(tuple(args.shape), args.n_source, args.n_target, args.n_test, semi)
    raw0 = prepare_phantom(run, args.dataset, phantom, args.folds)
    targets = DomainTable.from_dataset_json(load_dataset_json(raw0)).target
    rounds = {"round 0": {"trainer": args.round0_trainer, "dataset": args.dataset,
                          "summary": train_and_evaluate(run, work, raw0, args.dataset, args.round0_trainer, folds)}}
    round_work, d1 = work / "pseudolabels_round1", args.dataset + 1
    raw1 = self_training_round(run, round_work, args.dataset, args.round0_trainer, folds, d1, args.top,
                               args.absent_agreement)
    rounds["round 1"] = {"trainer": ROUND_TRAINER, "dataset": d1,
                         "summary": train_and_evaluate(run, work, raw1, d1, ROUND_TRAINER, folds)}
    for r in rounds.values():
        r["targets"] = target_means(r.pop("summary"), targets)
    report = json.loads((round_work / "report.json").read_text())
    true_dice = true_fused_dice(raw0, round_work, report["cases"])
    other = 1.0 - args.absent_agreement
    qualities = {f"{args.absent_agreement:g} (round 1)": selection_quality(report["cases"], true_dice, args.top,
                                                                           targets),
                 f"{other:g}": selection_quality(rescored(raw0, round_work, folds, other, args.top), true_dice,
                                                 args.top, targets)}
    quality = qualities[f"{args.absent_agreement:g} (round 1)"]
    cases = (f"{args.n_source} CT, {args.semi_supervised:g} of them labeled" if args.semi_supervised else
             f"{args.n_source} CT + {args.n_target} unlabeled cases per target modality")
    settings = (f"{'x'.join(map(str, args.shape))} voxels, {cases}, {args.folds} folds x {args.epochs} epochs x "
                f"{args.iterations} iterations, top {args.top} per modality, CPU")
    results = {"settings": settings, "rounds": rounds, "selection": qualities, "timings_s": run.timings}
    (work / "rounds.json").write_text(json.dumps(results, indent=2))
    table = markdown(rounds, qualities, settings, targets)
    (work / "rounds.md").write_text(table + "\n")
    plot_selection(quality, work / "selection.png")
    print("\n" + table)
    print(f"\nrounds.json, rounds.md and selection.png written to {work}")
    return results


if __name__ == "__main__":
    main()
