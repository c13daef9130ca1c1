"""Stage 1 of the FLARE 2024 Task 3 pipeline on the phantom: organ-attention CycleGAN, translated CT,
nnU-Net trained on the translations; against source-only, the ceiling and the plain CycleGAN.

Through the real commands:

1. the phantom (labeled CT; unlabeled T1 and T2 training cases; test sets), planned;
2. ``nnUNetTrainerSourceOnly`` fold 0: the floor, and the segmenter S of the organ attention;
3. for the organ-attention CycleGAN and the plain one (``--no_attention``): one
   ``nnUNetv2_uda_cyclegan_train`` per target domain (T1, T2), ``nnUNetv2_uda_translate`` into one
   dataset holding both, planning, ``nnUNetTrainerSelfTraining`` fold 0 on the translated CT (the
   paper trains nnU-Net's own ResEnc M on it; that trainer is nnU-Net's network and sampling with
   the brief-run variables), and the target test sets predicted and evaluated;
4. the self-training rounds (section 2.3) from the organ-attention round 0: every fold (``--folds``)
   of ``nnUNetTrainerSelfTraining`` on the translated CT, then per round (``--rounds``)
   ``nnUNetv2_uda_pseudolabel`` (the ``--top`` most fold-consistent unlabeled target cases per
   modality, fused labels) into a new dataset holding the translated CT and them, and every fold
   of ``nnUNetTrainerSelfTraining`` on it; each round's fold ensemble predicts the test sets;
5. a figure of source, translated (with and without attention) and real target slices, and the
   translation fidelity: per organ, the mean intensity of the translated CT against that of the real
   target test cases (the phantom draws every organ's intensity per case around one mean per domain,
   so a faithful translation reproduces the real target's organ means; ``organ_intensities.png``).

The ceiling comes from ``examples/benchmark_domain_gap.py`` (``--gap``, its ``domain_gap.json``,
run with the same ``--epochs``, ``--iterations`` and case counts); each method's share of the
floor-to-ceiling gap closed is printed. Writes ``stage1.json``, ``stage1.md``, ``translations.png``
and ``organ_intensities.png`` to ``--work``; finished steps are reused.

    python examples/benchmark_domain_gap.py --work benchmark_output/domain_gap_unpaired
    python examples/flare_stage1.py --work benchmark_output/stage1 \\
        --gap benchmark_output/domain_gap_unpaired/domain_gap.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from nnunet_uda.benchmarking import gap_closed, target_mean  # noqa: E402
from nnunet_uda.data.raw import dataset_folder_name  # noqa: E402
from nnunet_uda.pipeline import (PhantomSettings, Runner, add_run_arguments, command, final_checkpoint,  # noqa: E402
                                 prepare_phantom, self_training_round, train_and_evaluate, work_runner)

TARGETS = ("T1", "T2")
ROUND_TRAINER = "nnUNetTrainerSelfTraining"
FLOOR, CEILING = "source only (floor)", "supervised on target (ceiling)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="benchmark_output/stage1")
    parser.add_argument("--dataset", type=int, default=985,
                        help="ids DATASET (phantom), +1 and +2 (translated), +2+R (round R)")
    parser.add_argument("--gap", help="domain_gap.json of examples/benchmark_domain_gap.py, for the ceiling")
    parser.add_argument("--gan_epochs", type=int, default=10)
    parser.add_argument("--gan_iterations", type=int, default=200)
    parser.add_argument("--gan_width", type=int, default=32)
    parser.add_argument("--gan_blocks", type=int, default=6)
    parser.add_argument("--n_gan_target", type=int, default=16, help="target cases the CycleGAN trains on")
    parser.add_argument("--rounds", type=int, default=1, help="self-training rounds after round 0 (0: none)")
    parser.add_argument("--folds", type=int, default=5, help="folds of round 0 and of every round")
    parser.add_argument("--top", type=int, default=8, help="pseudo-labeled cases selected per target modality")
    add_run_arguments(parser, epochs=80, iterations=25)
    return parser.parse_args(argv)


def train_translation(run: Runner, work: Path, dataset_id: int, domain: str, attention: bool, segmenter: Path,
                      args) -> Path:
    out = work / f"cyclegan_{domain}_{'attention' if attention else 'plain'}"
    if not (out / "generator_final.pth").is_file():
        run("cyclegan", command("nnUNetv2_uda_cyclegan_train"), "-d", str(dataset_id), "--target", domain, "-o",
            str(out), *(("--segmenter", str(segmenter), "-f", "0") if attention else ("--no_attention",)),
            "--epochs", str(args.gan_epochs), "--iterations", str(args.gan_iterations), "--width",
            str(args.gan_width), "--n_blocks", str(args.gan_blocks), "--discriminator_layers", "2", "--n_target",
            str(args.n_gan_target), "-device", "cpu")
    return out


def self_training(run: Runner, work: Path, round0: Path, round0_id: int, args) -> dict[str, dict]:
    """Round 0 (the organ-attention translated dataset ``round0``, id ``round0_id``) with every fold,
    then ``args.rounds`` pseudo-label rounds; the test results of each round's fold ensemble."""
    if not args.rounds:
        return {}
    folds = list(range(args.folds))
    raw, dataset_id = round0, round0_id
    rows = {}
    for r in range(args.rounds + 1):
        if r:
            new_id = args.dataset + 2 + r
            raw = self_training_round(run, work / f"pseudolabels_round{r}", dataset_id, ROUND_TRAINER, folds, new_id,
                                      args.top)
            dataset_id = new_id
        rows[f"round {r}, {args.folds}-fold ensemble"] = train_and_evaluate(run, work, raw, dataset_id, ROUND_TRAINER,
                                                                           folds)["mean"]
    return rows


def markdown(rows: dict[str, dict], ceiling: float | None, settings: str) -> str:
    floor = target_mean(rows[FLOOR], TARGETS)
    lines = [settings, "", "| method | " + " | ".join(f"{d} Dice | {d} HD95" for d in TARGETS)
             + " | mean target Dice | gap closed |", "|" + "---|" * (3 + 2 * len(TARGETS))]
    for name, means in rows.items():
        cells = " | ".join(f"{means[d]['average']['dice']:.3f} | {means[d]['average']['hd95']:.1f}" for d in TARGETS)
        lines.append(f"| {name} | {cells} | {target_mean(means, TARGETS):.3f} | "
                     f"{gap_closed(target_mean(means, TARGETS), floor, ceiling)} |")
    return "\n".join(lines)


def plot_translations(raw: Path, translated: dict[str, Path], path: Path) -> None:
    """Middle slices: a CT case, its translations per model and target, and real target cases."""
    case = sorted((raw / "imagesTr").glob("ph_CT_*_0000.nii.gz"))[0].name[:-len("_0000.nii.gz")]

    def middle(image_path: Path) -> np.ndarray:
        volume = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path)))
        return volume[volume.shape[0] // 2]
    panels = [("CT (source)", middle(raw / "imagesTr" / f"{case}_0000.nii.gz"))]
    for name, folder in translated.items():
        for domain in TARGETS:
            panels.append((f"{domain}, {name}", middle(folder / "imagesTr" / f"{case}_to_{domain}_0000.nii.gz")))
    for domain in TARGETS:
        real = sorted((raw / "imagesTr").glob(f"ph_{domain}_*_0000.nii.gz"))[0]
        panels.append((f"real {domain}", middle(real)))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 2.6))
    for ax, (title, image) in zip(axes, panels):
        ax.imshow(image, cmap="gray", vmin=-1, vmax=1)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def labeled_images(folder: Path, split: str, pattern: str) -> list[tuple[Path, Path]]:
    """(image, label) paths of the cases of ``folder``'s ``images<split>`` whose image matches ``pattern``."""
    return [(f, folder / f"labels{split}" / f.name.replace("_0000.nii.gz", ".nii.gz"))
            for f in sorted((folder / f"images{split}").glob(pattern))]


def organ_means(pairs: list[tuple[Path, Path]], labels: dict[str, int]) -> dict[str, float]:
    """Mean image intensity inside each labeled structure, over the (image, label) pairs."""
    length = max(labels.values()) + 1
    sums, counts = np.zeros(length), np.zeros(length)
    for image_path, label_path in pairs:
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(label_path))).ravel()
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(image_path))).ravel()
        sums += np.bincount(label, weights=image, minlength=length)[:length]
        counts += np.bincount(label, minlength=length)[:length]
    return {name: float(sums[v] / counts[v]) if counts[v] else float("nan") for name, v in labels.items()}


def organ_intensities(raw: Path, translated: dict[str, Path], path: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Per target domain and organ, the mean intensity of the real target test cases, of the CT test
    cases untranslated (the reference a translation must improve on) and of every model's translated
    CT (all in the harmonised [-1, 1] range), drawn as grouped bars."""
    labels = {k: v for k, v in json.loads((raw / "dataset.json").read_text())["labels"].items() if k != "ignore"}
    untranslated = organ_means(labeled_images(raw, "Ts", "ph_CT_*_0000.nii.gz"), labels)
    table = {}
    for domain in TARGETS:
        table[domain] = {"real target": organ_means(labeled_images(raw, "Ts", f"ph_{domain}_*_0000.nii.gz"), labels),
                         "none (the CT itself)": untranslated}
        for name, folder in translated.items():
            pairs = labeled_images(folder, "Tr", f"ph_CT_*_to_{domain}_0000.nii.gz")
            table[domain][name] = organ_means(pairs, labels)
    fig, axes = plt.subplots(1, len(TARGETS), figsize=(5.5 * len(TARGETS), 3.2), sharey=True)
    for ax, domain in zip(axes, TARGETS):
        sources = list(table[domain])
        for j, source in enumerate(sources):
            offsets = np.arange(len(labels)) + (j - (len(sources) - 1) / 2) * 0.8 / len(sources)
            ax.bar(offsets, list(table[domain][source].values()), width=0.8 / len(sources), label=source)
        ax.set_xticks(range(len(labels)), list(labels), rotation=30, fontsize=7)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(f"{domain}: mean intensity per structure", fontsize=9)
    axes[0].set_ylabel("harmonised intensity")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return table


def fidelity_markdown(table: dict[str, dict[str, dict[str, float]]]) -> str:
    """Per model and target domain, the mean absolute organ-intensity error against the real target."""
    lines = ["| translation | " + " | ".join(f"{d} organ intensity error" for d in TARGETS) + " |",
             "|" + "---|" * (1 + len(TARGETS))]
    for name in [n for n in table[TARGETS[0]] if n != "real target"]:
        errors = []
        for domain in TARGETS:
            real, ours = table[domain]["real target"], table[domain][name]
            errors.append(np.mean([abs(ours[k] - real[k]) for k in real if k != "background"]))
        lines.append(f"| {name} | " + " | ".join(f"{e:.2f}" for e in errors) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    work, run = work_runner(args)
    raw = prepare_phantom(run, args.dataset, PhantomSettings(n_source=args.n_source, n_target=args.n_target), 5)
    rows = {FLOOR: train_and_evaluate(run, work, raw, args.dataset, "nnUNetTrainerSourceOnly")["mean"]}
    segmenter = final_checkpoint(run, raw, "nnUNetTrainerSourceOnly", 0).parents[1]
    translated = {}
    for offset, (name, attention) in enumerate((("organ attention", True), ("plain CycleGAN", False)), start=1):
        models = [train_translation(run, work, args.dataset, d, attention, segmenter, args) for d in TARGETS]
        dataset_id = args.dataset + offset
        folder = Path(run.env["nnUNet_raw"]) / dataset_folder_name(dataset_id, "UDAPhantomTranslated")
        if not (folder / "dataset.json").is_file():
            run("translate", command("nnUNetv2_uda_translate"), "-d", str(args.dataset), "-o", str(dataset_id),
                "-m", *map(str, models), "-device", "cpu")
            run("plan and preprocess", command("nnUNetv2_uda_plan_and_preprocess"), "-d", str(dataset_id), "-bs",
                "2")
        translated[name] = folder
        rows[f"nnU-Net on CT translated, {name}"] = train_and_evaluate(run, work, folder, dataset_id,
                                                                       ROUND_TRAINER)["mean"]
    rows.update(self_training(run, work, translated["organ attention"], args.dataset + 1, args))
    ceiling = None
    if args.gap:
        gap = json.loads(Path(args.gap).read_text())["results"]
        rows[CEILING] = gap[CEILING]
        ceiling = target_mean(gap[CEILING], TARGETS)
    settings = (f"phantom 24x24x24, {args.n_source} CT + {args.n_target} per target training cases; CycleGAN "
                f"{args.gan_epochs} x {args.gan_iterations} iterations, width {args.gan_width}, {args.gan_blocks} "
                f"blocks, from {args.n_gan_target} target cases; nnU-Net fold 0 (rounds: {args.folds} folds, "
                f"top {args.top} per modality), {args.epochs} epochs x {args.iterations} iterations, batch 2, "
                f"ResEnc M, CPU")
    intensities = organ_intensities(raw, translated, work / "organ_intensities.png")
    table = markdown(rows, ceiling, settings) + "\n\n" + fidelity_markdown(intensities)
    (work / "stage1.json").write_text(json.dumps({"settings": settings, "results": rows,
                                                  "organ_intensities": intensities}, indent=2))
    (work / "stage1.md").write_text(table + "\n")
    plot_translations(raw, translated, work / "translations.png")
    print("\n" + table + "\n\nTime per step: " + ", ".join(f"{k} {v:.0f} s" for k, v in run.timings.items()))
    return rows


if __name__ == "__main__":
    main()
