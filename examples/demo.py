"""The nnunet_uda demo: nnU-Net on MRI scans it has no labels for, without and with domain adaptation, on the CPU.

1. ``nnUNetv2_uda_phantom``: a labeled CT-like source and unlabeled T1- and T2-like MRI targets, one subject per
   case index in every modality, the unlabeled MRI training cases with registration-like initial labels (AICL's
   setting: ``--paired --pseudo_labels reg``);
2. ``nnUNetv2_uda_plan_and_preprocess``: nnU-Net planning (ResEnc M) with domains;
3. ``nnUNetv2_train -tr nnUNetTrainerSourceOnly``: nnU-Net on the CT labels alone, the floor;
4. ``nnUNetv2_train -tr nnUNetTrainerAICL``: the domain-adaptation trainer;
5. ``nnUNetv2_predict``: both models on the MRI test sets, each domain with its own norms;
6. ``nnUNetv2_uda_evaluate``, then ``summary.md`` and ``demo.png``: the two models side by side.

Run it with ``bash examples/run_demo.sh`` (sets up a virtual environment first) or, where nnunet_uda is
installed, ``python examples/demo.py``. What a run on 2 CPU cores gives is on docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_uda.figures import show_labels
from nnunet_uda.pipeline import (PhantomSettings, Runner, add_run_arguments, final_checkpoint, initial_label_quality,
                                 nnunet_environment, predictions_folder, prepare_phantom, train_and_evaluate)

FLOOR = "nnUNetTrainerSourceOnly"
#: three large organs: what nnU-Net begins to learn within the demo's CPU minutes (docs/benchmarks.md#the-demo)
DEMO_ORGANS = ("--organs", "liver", "kidney_left", "aorta", "--organ_scale", "1.5")
TARGETS = ("T1", "T2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="demo_output", help="folder for nnU-Net's raw, preprocessed and results")
    parser.add_argument("--dataset", type=int, default=990)
    parser.add_argument("--trainer", default="nnUNetTrainerAICL", help="the domain-adaptation trainer")
    add_run_arguments(parser, epochs=15, iterations=20, phantom_cases=False)
    parser.set_defaults(val_iterations=1)
    return parser.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    run = Runner(nnunet_environment(work, args.epochs, args.iterations, args.val_iterations),
                 log=work / "commands.log")
    start = time.time()
    phantom = PhantomSettings(n_source=10, n_target=10, n_test=3,
                              flags=("--paired", "--pseudo_labels", "reg", *DEMO_ORGANS))
    raw = prepare_phantom(run, args.dataset, phantom)
    run.env["nnUNet_n_proc_DA"] = "0"  # training on 2 cores: augmenting in the training process is 25% faster
    means = {trainer: train_and_evaluate(run, work, raw, args.dataset, trainer, domains=TARGETS)["mean"]
             for trainer in (FLOOR, args.trainer)}
    initial = initial_label_quality(raw)
    on_ct = source_validation(final_checkpoint(run, raw, FLOOR, 0).parent / "validation" / "summary.json", raw)
    plot_cases(raw, {trainer: predictions_folder(work, args.dataset, trainer) / "all" for trainer in means},
               work / "demo.png")
    text = summary(means, initial, on_ct, args, run.timings, time.time() - start)
    (work / "summary.md").write_text(text)
    print("\n" + text + f"\nCommands and their output: {work / 'commands.log'}")
    return text


def source_validation(summary_json: Path, raw: Path) -> dict[str, float]:
    """Dice per organ of the floor on its own CT validation cases (nnU-Net's final validation)."""
    names = {str(v): k for k, v in json.loads((raw / "dataset.json").read_text())["labels"].items()}
    return {names[label]: metrics["Dice"] for label, metrics in json.loads(summary_json.read_text())["mean"].items()}


def summary(means: dict[str, dict], initial: dict, on_ct: dict[str, float], args, timings: dict[str, float],
            total: float) -> str:
    """The Markdown table of Dice per organ and domain, floor against method, and what each model saw."""
    organs = [o for o in means[FLOOR][TARGETS[0]] if o != "average"] + ["average"]
    lines = [f"# nnU-Net on MRI without labels: `{FLOOR}` against `{args.trainer}`", "",
             f"Test Dice on the unlabeled MRI domains (3 cases each), {args.epochs} epochs x {args.iterations} "
             f"iterations of training per model on the CPU. The initial labels are what "
             f"`{args.trainer}` starts from on the MRI training cases (registration-like; scored against their "
             f"truth).", "",
             "| domain | organ | initial labels | " + f"`{FLOOR}` | `{args.trainer}` |", "|---|---|---|---|---|"]
    for domain in TARGETS:
        for organ in organs:
            cells = [f"{initial[domain][organ]['dice']:.2f}"] + [f"{means[t][domain][organ]['dice']:.2f}"
                                                                 for t in means]
            lines.append(f"| {domain} | {organ} | " + " | ".join(cells) + " |")
    target = {t: np.mean([means[t][d]["average"]["dice"] for d in TARGETS]) for t in means}
    lines += ["", f"Mean target Dice: {FLOOR} {target[FLOOR]:.2f}, {args.trainer} {target[args.trainer]:.2f}.", "",
              f"- `{FLOOR}` saw the CT labels only: nnU-Net without adaptation. On its own CT validation cases it "
              "reaches Dice " + ", ".join(f"{o} {d:.2f}" for o, d in on_ct.items()) + ": where an organ is near 0 "
              "there too, the demo's training was too short for nnU-Net to learn it from the CT; elsewhere the "
              "zeros on MRI are the domain gap.",
              f"- `{args.trainer}` saw the CT labels and the MRI training images with their initial labels, and "
              f"learned per-modality norms and AICL's contrastive terms on top (docs/methods/aicl.md).",
              "- `demo.png`: a slice of one test case per MRI domain: the image, the truth, both predictions.", "",
              "Time per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {total:.0f} s."]
    return "\n".join(lines) + "\n"


def plot_cases(raw: Path, predictions: dict[str, Path], path: Path) -> None:
    """The middle slice of the first test case of each MRI domain: image, truth and each model's prediction."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2.4 * (2 + len(predictions)), 2.6 * len(TARGETS)), layout="constrained")
    axes = figure.subplots(len(TARGETS), 2 + len(predictions), squeeze=False)
    for row, domain in zip(axes, TARGETS):
        case = sorted(p.name for p in (raw / "labelsTs").glob(f"*_{domain}_*.nii.gz"))[0]
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTs" / case.replace(".nii.gz", "_0000.nii.gz"))))
        z = image.shape[0] // 2
        show_labels(row[0], image[z], None, f"{domain} test image")
        show_labels(row[1], image[z], read_labels(raw / "labelsTs" / case)[z], "truth")
        for ax, (trainer, folder) in zip(row[2:], predictions.items()):
            show_labels(ax, image[z], read_labels(folder / case)[z], trainer.replace("nnUNetTrainer", ""))
    figure.savefig(path, dpi=110)


def read_labels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


if __name__ == "__main__":
    main()
