"""Translation throughput: ``nnUNetv2_uda_translate``'s dataset writer against the generator's bare
forward pass, in slices per second, on the same slices, batch size and device (goal: at least 0.8).

A raw dataset of ``--cases`` CT volumes (``--shape`` Z Y X, smooth random anatomy-like intensities,
harmonised) and one unlabeled target case is written to a temporary folder; the generator is the
paper's (ResNet, 9 blocks, width 64) with random weights, which do not change its speed. The
writer's time includes reading each volume, translating it slice batch by slice batch, harmonising
and writing the result, and copying its label.

    python examples/benchmark_translation.py --cases 8 --shape 32 128 128 --batch_size 16
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy.ndimage import gaussian_filter

from nnunet_uda.data.raw import save_json
from nnunet_uda.gan.dataset import write_translated_dataset
from nnunet_uda.gan.networks import ResnetGenerator
from nnunet_uda.gan.translation import translate_volume


def write_source_dataset(folder: Path, cases: int, shape: tuple[int, int, int]) -> dict:
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    names = [f"ct_{i:03d}" for i in range(cases)] + ["mr_000"]
    for name in names:
        image = np.tanh(gaussian_filter(rng.normal(size=shape), 3) * 20).astype(np.float32)
        label = (image > 0.5).astype(np.uint8) if name.startswith("ct") else np.full(shape, 2, np.uint8)
        for array, path in ((image, folder / "imagesTr" / f"{name}_0000.nii.gz"),
                            (label, folder / "labelsTr" / f"{name}.nii.gz")):
            volume = sitk.GetImageFromArray(array)
            volume.SetSpacing((0.8, 0.8, 2.5))
            sitk.WriteImage(volume, str(path))
    dataset = {"name": "TranslationBenchmark", "channel_names": {"0": "image"},
               "labels": {"background": 0, "organ": 1, "ignore": 2}, "numTraining": len(names),
               "file_ending": ".nii.gz",
               "uda": {"domains": {"CT": {"modality": "CT"}, "T1": {"modality": "MR"}}, "target": ["T1"],
                       "cases": {n: {"domain": "CT"} if n.startswith("ct") else {"domain": "T1", "labels": "none"}
                                 for n in names}}}
    save_json(dataset, folder / "dataset.json")
    return dataset


@torch.no_grad()
def bare_forward(generator, slices: np.ndarray, batch_size: int, device: str) -> float:
    """Seconds for the generator alone on every slice, in batches, the input already on the device."""
    batches = [b.to(device) for b in torch.from_numpy(slices).unsqueeze(1).split(batch_size)]
    generator(batches[0])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        generator(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 128, 128])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    generator = ResnetGenerator().to(args.device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "Dataset001_Source"
        dataset = write_source_dataset(raw, args.cases, tuple(args.shape))
        translate_volume(generator, np.zeros((1, *args.shape[1:]), np.float32), 1, args.device)  # warm-up
        _, run = write_translated_dataset(raw, dataset, {"T1": generator}, 2, "Translated", Path(tmp),
                                          args.batch_size, args.device)
        slices = np.concatenate([sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
                                 for path in sorted((raw / "imagesTr").glob("ct_*_0000.nii.gz"))])
        bare = len(slices) / bare_forward(generator, slices, args.batch_size, args.device)
    print(f"{args.cases} volumes of {' x '.join(map(str, args.shape))}, batch {args.batch_size}, {args.device}:")
    print(f"  nnUNetv2_uda_translate's writer: {run.slices_per_second:.2f} slices/s ({run.slices} slices, "
          f"{run.seconds:.1f} s, reading and writing included)")
    print(f"  generator forward alone:         {bare:.2f} slices/s")
    print(f"  ratio: {run.slices_per_second / bare:.3f} (goal: at least 0.8)")


if __name__ == "__main__":
    main()
