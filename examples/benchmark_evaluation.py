"""Evaluation time per case: what ``nnUNetv2_uda_evaluate`` computes for a folder, in this process.

    # the demo's test predictions (after bash examples/run_demo.sh)
    python examples/benchmark_evaluation.py --ref demo_output/nnUNet_raw/Dataset990_UDAPhantom/labelsTs \\
        --pred demo_output/predictions_990_nnUNetTrainerUDA/all -d demo_output/nnUNet_raw/Dataset990_UDAPhantom
    # a folder of larger phantom cases made on the spot: registration-like predictions of the true labels
    python examples/benchmark_evaluation.py --phantom 96 192 192 --cases 4

Prints the median over ``--repeat`` runs of the time per case (reading both files included, one process).
Run it with another checkout first on ``PYTHONPATH`` to compare two versions on the same folder; the
figures are on ``docs/evaluation.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_uda.evaluation.report import evaluate_folder


def phantom_folder(root: Path, shape: tuple[int, int, int], cases: int) -> tuple[Path, Path, dict]:
    """``cases`` phantom CT label maps of ``shape`` and registration-like predictions of them."""
    from nnunet_uda.synthetic.anatomy import LABELS
    from nnunet_uda.synthetic.case import synthesize_case
    from nnunet_uda.synthetic.pseudo_labels import PSEUDO_LABEL_PERTURBATIONS, perturb_labels

    for folder in ("labelsTs", "predictions"):
        (root / folder).mkdir()
    for index in range(cases):
        truth = synthesize_case(0, "CT", index, "test", shape=shape)
        predicted = perturb_labels(truth.label, truth.spacing, PSEUDO_LABEL_PERTURBATIONS["reg"],
                                   np.random.default_rng(index))
        for folder, labels in (("labelsTs", truth.label), ("predictions", predicted)):
            image = sitk.GetImageFromArray(labels.astype(np.uint8))
            image.SetSpacing(truth.spacing[::-1])
            sitk.WriteImage(image, str(root / folder / f"case_{index:03d}.nii.gz"))
    labels = {name: value for name, value in LABELS.items() if name != "ignore"}
    return root / "labelsTs", root / "predictions", {"labels": labels, "file_ending": ".nii.gz"}


def seconds_per_case(reference: Path, prediction: Path, dataset_json: dict, repeat: int,
                     preset: str | None) -> tuple[float, float]:
    """Median wall-clock and CPU seconds per case over ``repeat`` runs (CPU time varies less on a busy machine)."""
    cases = len(list(reference.glob("*" + dataset_json["file_ending"])))
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        evaluate_folder(reference, prediction, dataset_json, num_processes=1, preset=preset)
        wall.append((time.perf_counter() - start) / cases)
        cpu.append((time.process_time() - start_cpu) / cases)
    return statistics.median(wall), statistics.median(cpu)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", help="folder of reference label files")
    parser.add_argument("--pred", help="folder of predictions, same file names")
    parser.add_argument("-d", help="raw dataset folder (its dataset.json)")
    parser.add_argument("--phantom", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="instead: make a phantom folder of this CT shape")
    parser.add_argument("--cases", type=int, default=4, help="phantom cases (default 4)")
    parser.add_argument("--preset", default=None, help="evaluation preset (e.g. flare)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        if args.phantom:
            reference, prediction, dataset_json = phantom_folder(Path(scratch), tuple(args.phantom), args.cases)
        else:
            reference, prediction = Path(args.ref), Path(args.pred)
            dataset_json = json.loads((Path(args.d) / "dataset.json").read_text())
        wall, cpu = seconds_per_case(reference, prediction, dataset_json, args.repeat, args.preset)
    print(f"evaluation time per case: {wall * 1000:.1f} ms wall, {cpu * 1000:.1f} ms CPU (medians of "
          f"{args.repeat} runs)")


if __name__ == "__main__":
    main()
