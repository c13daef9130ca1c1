"""nnUNetv2_uda_harmonize: harmonise the intensities of images before nnUNetv2_predict.

Training images are harmonised when a dataset is written; images to be predicted must be
harmonised the same way, by their modality (see nnunet_uda.intensity).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import SimpleITK as sitk
from tqdm import tqdm

from nnunet_uda.data.raw import atomic_folder
from nnunet_uda.intensity import harmonize


def harmonize_folder(source: Path, destination: Path, modality: str, ending: str = ".nii.gz") -> int:
    files = sorted(Path(source).glob("*" + ending))
    if not files:
        raise FileNotFoundError(f"no *{ending} images in {source}")
    with atomic_folder(Path(destination), overwrite=True) as tmp:
        for path in tqdm(files, desc="harmonising"):
            image = sitk.ReadImage(str(path))
            out = sitk.GetImageFromArray(harmonize(sitk.GetArrayFromImage(image), modality))
            out.CopyInformation(image)
            sitk.WriteImage(out, str(tmp / path.name))
    return len(files)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Harmonise image intensities by modality (CT: [-600, 600] HU to "
                                                 "[-1, 1]; MR: 1st-99th percentile to [-1, 1]).")
    parser.add_argument("-i", required=True, help="folder of images")
    parser.add_argument("-o", required=True, help="output folder (written when complete)")
    parser.add_argument("-m", required=True, help="modality of the images: CT or MR")
    parser.add_argument("--file_ending", default=".nii.gz")
    args = parser.parse_args(argv)
    try:
        n = harmonize_folder(Path(args.i), Path(args.o), args.m, args.file_ending)
    except FileNotFoundError as e:
        raise SystemExit(f"ERROR: {e}")
    print(f"{n} images written to {args.o}")


if __name__ == "__main__":
    main()
