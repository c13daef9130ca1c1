"""CISFA on the unpaired phantom of the FLARE stage-1 benchmark: target Dice, HD95 and ASSD beside source-only,
the CycleGAN translations and the ceiling.

The phantom is stage 1's (``examples/flare_stage1.py``: labeled CT, unlabeled T1 and T2 of other subjects, the
same ``--dataset``, case counts and seed, so the same images and test sets). CISFA's generator translates into
one target domain, so each trainer is trained once per target domain (``nnUNet_uda_target_domain``, each into its
own ``nnUNet_results``) and scored on that domain's test set. Trainers: ``nnUNetTrainerCISFA`` and Table 3's
rows (``_noPCL``: L_gcl only, ``_noGCL``: L_pcl only, ``_noContrast``, ``_Sequential``; the paper's are CT to
T2), with ``--trainers`` also Table 1's ``_noWeight``.

The other rows come from stage 1's ``stage1.json`` (``--stage1``): source-only (the floor), nnU-Net on the CT
translated by the organ-attention and by the plain CycleGAN, and the ceiling if stage 1 was given the domain-gap
benchmark's; without stage 1, ``--gap`` (``domain_gap.json`` of ``examples/benchmark_domain_gap.py``, same
images) gives the floor and the ceiling alone. With ``--aicl`` (``aicl_reg.json`` or ``aicl_sreg.json`` of
``examples/benchmark_aicl.py --unpaired`` on the same domain-gap benchmark, so on the same images) AICL's row is
added; unlike CISFA, AICL also learned from initial pseudo labels of the target cases and from T1's gallbladder
labels (its partial-label setting). Each row's share of the floor-to-ceiling gap closed is printed. Writes
``cisfa.json`` and ``cisfa.md``; every training leaves its ``cisfa_preview.png``. Finished trainings are reused.
``--targets`` trains and tabulates some target domains only. With ``--translated``, each trained generator also
translates the CT training cases (``nnUNetv2_uda_translate -m <fold folder>``) and nnU-Net trains on them, as stage 1
trains on a CycleGAN's translations: a row per trainer that scores the generator apart from the joint segmenter.
On two cores, run one benchmark at a time: two
trainings side by side each ran 4-5 times slower.

    python examples/benchmark_domain_gap.py --work benchmark_output/domain_gap_unpaired
    python examples/flare_stage1.py --work benchmark_output/stage1 --rounds 0 \\
        --gap benchmark_output/domain_gap_unpaired/domain_gap.json
    python examples/benchmark_aicl.py --work benchmark_output/aicl_unpaired --unpaired --pseudo sreg \\
        --gap benchmark_output/domain_gap_unpaired/domain_gap.json
    python examples/benchmark_cisfa.py --work benchmark_output/cisfa --stage1 benchmark_output/stage1/stage1.json \\
        --aicl benchmark_output/aicl_unpaired/aicl_sreg.json
    python examples/benchmark_cisfa.py --work benchmark_output/cisfa --trainers nnUNetTrainerCISFA \\
        --gap benchmark_output/domain_gap_unpaired/domain_gap.json        # the CISFA row alone: 1.5 h
    python examples/benchmark_cisfa.py --work benchmark_output/cisfa --trainers nnUNetTrainerCISFA --translated \
        --gap benchmark_output/domain_gap_unpaired/domain_gap.json        # + nnU-Net on its translations: 0.5 h more

Results: docs/methods/cisfa.md#measured.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from nnunet_uda.benchmarking import gap_closed, target_mean
from nnunet_uda.data.raw import dataset_folder_name
from nnunet_uda.pipeline import PhantomSettings, Runner, add_run_arguments, command, final_checkpoint, \
    prepare_phantom, train_and_evaluate, work_runner
from nnunet_uda.training.cisfa import TARGET_DOMAIN_ENV

TARGETS = ("T1", "T2")
TRAINERS = {"nnUNetTrainerCISFA": "CISFA", "nnUNetTrainerCISFA_noPCL": "CISFA, L_gcl only (Table 3)",
            "nnUNetTrainerCISFA_noGCL": "CISFA, L_pcl only (Table 3)",
            "nnUNetTrainerCISFA_noContrast": "CISFA, no contrast (Table 3)",
            "nnUNetTrainerCISFA_Sequential": "CISFA, sequential (Table 3)",
            "nnUNetTrainerCISFA_noWeight": "CISFA, unweighted patch contrast (Table 1)"}
AICL_ROW = "AICL (partial labels, initial pseudo labels)"
ROUND_TRAINER = "nnUNetTrainerSelfTraining"  # stage 1's trainer for translated CT
FLOOR = "source only (floor)"
CEILING = "supervised on target (ceiling)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="benchmark_output/cisfa")
    parser.add_argument("--dataset", type=int, default=985, help="the phantom's id (stage 1's --dataset)")
    parser.add_argument("--stage1", help="stage1.json of examples/flare_stage1.py: the floor, CycleGAN, ceiling rows")
    parser.add_argument("--gap", help="domain_gap.json of examples/benchmark_domain_gap.py: the floor and ceiling "
                        "rows where --stage1 is not given")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--aicl", help="aicl_*.json of examples/benchmark_aicl.py --unpaired: the AICL row")
    parser.add_argument("--trainers", nargs="+", choices=list(TRAINERS),
                        default=[t for t in TRAINERS if t != "nnUNetTrainerCISFA_noWeight"])
    parser.add_argument("--translated", action="store_true", help="also train nnU-Net on the CT translated by "
                        "each trained generator (stage 1's recipe)")
    add_run_arguments(parser, epochs=80, iterations=25)
    return parser.parse_args(argv)


def domain_runner(run: Runner, work: Path, domain: str) -> tuple[Path, Runner]:
    """The work folder and runner of one target domain: its own ``nnUNet_results``, G translating into it."""
    domain_work = work / domain
    domain_work.mkdir(exist_ok=True)
    return domain_work, Runner({**run.env, "nnUNet_results": str(domain_work / "nnUNet_results"),
                                TARGET_DOMAIN_ENV: domain}, log=run.log, timings=run.timings)


def train_per_target(run: Runner, work: Path, raw: Path, dataset_id: int, trainer: str, targets) -> dict:
    """One model per target domain, each scored on its domain's test set: the evaluation means by domain."""
    means = {}
    for domain in targets:
        domain_work, domain_run = domain_runner(run, work, domain)
        summary = train_and_evaluate(domain_run, domain_work, raw, dataset_id, trainer, domains=(domain,))
        means[domain] = summary["mean"][domain]
    return means


def translated_dataset_id(dataset_id: int, trainer: str, domain: str) -> int:
    """The id of the CT translated into ``domain`` by ``trainer``'s generator: one dataset per trainer and domain."""
    return dataset_id + 1 + TARGETS.index(domain) + len(TARGETS) * list(TRAINERS).index(trainer)


def train_on_translations(run: Runner, work: Path, raw: Path, dataset_id: int, trainer: str, targets) -> dict:
    """Per target domain, the CT training cases translated by ``trainer``'s generator into a new dataset, nnU-Net
    trained on it and scored on the domain's real test cases (stage 1's recipe)."""
    means = {}
    for domain in targets:
        domain_work, domain_run = domain_runner(run, work, domain)
        translated_id = translated_dataset_id(dataset_id, trainer, domain)
        folder = Path(run.env["nnUNet_raw"]) / dataset_folder_name(translated_id, "UDAPhantomTranslated")
        if not (folder / "dataset.json").is_file():
            model = final_checkpoint(domain_run, raw, trainer, 0).parent
            run("translate", command("nnUNetv2_uda_translate"), "-d", str(dataset_id), "-o", str(translated_id),
                "-m", str(model), "-device", "cpu")
            run("plan and preprocess", command("nnUNetv2_uda_plan_and_preprocess"), "-d", str(translated_id),
                "-bs", "2", "-c", "3d_fullres")
        summary = train_and_evaluate(domain_run, domain_work, folder, translated_id, ROUND_TRAINER)
        means[domain] = summary["mean"][domain]
    return means


def aicl_row(path: Path) -> dict:
    """AICL's target means from ``examples/benchmark_aicl.py``'s output, which must come from the unpaired phantom."""
    if not path.is_file():
        raise SystemExit(f"--aicl {path} not found: run examples/benchmark_aicl.py --unpaired (commands above)")
    measured = json.loads(path.read_text())
    if "unpaired" not in measured["settings"]:
        raise SystemExit(f"--aicl {path} was measured on the paired phantom, whose images differ from stage 1's: run "
                         f"examples/benchmark_aicl.py --unpaired")
    return measured["results"]["AICL"]


def markdown(rows: dict[str, dict], settings: str, targets) -> str:
    floor = target_mean(rows[FLOOR], targets) if FLOOR in rows else None
    ceiling = target_mean(rows[CEILING], targets) if CEILING in rows else None
    organs = [o for o in next(iter(rows.values()))[targets[0]] if o != "average"]
    metrics = ("dice", "hd95", "assd")
    lines = [settings, "", "| method | " + " | ".join(f"{d} Dice | {d} HD95 | {d} ASSD" for d in targets)
             + " | mean target Dice | gap closed | " + " | ".join(organs) + " |",
             "|" + "---|" * (3 + 3 * len(targets) + len(organs))]
    for name, means in rows.items():
        cells = " | ".join(f"{means[d]['average'][m]:.3f}" if m == "dice" else f"{means[d]['average'][m]:.1f}"
                           for d in targets for m in metrics)
        dice = target_mean(means, targets)
        closed = gap_closed(dice, floor, ceiling) if floor is not None else "n/a"
        organ_cells = " | ".join(f"{target_mean(means, targets, organ=o):.3f}" for o in organs)
        lines.append(f"| {name} | {cells} | {dice:.3f} | {closed} | {organ_cells} |")
    return "\n".join(lines) + "\n\nPer-organ columns: Dice averaged over the target domains."


def main(argv=None) -> dict:
    args = parse_args(argv)
    work, run = work_runner(args)
    raw = prepare_phantom(run, args.dataset, PhantomSettings(n_source=args.n_source, n_target=args.n_target), 5)
    compared = json.loads(Path(args.stage1 or args.gap).read_text())["results"] if args.stage1 or args.gap else {}
    rows = {name: means for name, means in compared.items() if name == FLOOR or name.startswith("nnU-Net on CT")}
    if args.aicl:
        rows[AICL_ROW] = aicl_row(Path(args.aicl))
    for trainer in args.trainers:
        rows[TRAINERS[trainer]] = train_per_target(run, work, raw, args.dataset, trainer, args.targets)
    for trainer in args.trainers if args.translated else ():
        rows[f"nnU-Net on CT translated, generator of {TRAINERS[trainer]}"] = train_on_translations(
            run, work, raw, args.dataset, trainer, args.targets)
    if CEILING in compared:
        rows[CEILING] = compared[CEILING]
    settings = (f"unpaired phantom 24x24x24, {args.n_source} CT + {args.n_target} per target training cases; one "
                f"CISFA model per target domain, fold 0, {args.epochs} epochs x {args.iterations} iterations, batch 2, "
                f"ResEnc M 3d_fullres, CPU")
    table = markdown(rows, settings, args.targets)
    (work / "cisfa.json").write_text(json.dumps({"settings": settings, "results": rows}, indent=2))
    (work / "cisfa.md").write_text(table + "\n")
    print("\n" + table + "\n\nTime per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in run.timings.items()))
    return rows


if __name__ == "__main__":
    main()
