"""nnUNetv2_uda_cyclegan_train: train the organ-attention CycleGAN from a UDA dataset's labeled
source cases into one target domain (FLARE 2024 Task 3, sections 2.1 and 3.2).

Example::

    nnUNetv2_train 960 3d_fullres 0 -tr nnUNetTrainerSourceOnly -p nnUNetResEncUNetMPlans
    nnUNetv2_uda_cyclegan_train -d 960 --target T1 -o cyclegan_T1 \\
        --segmenter $nnUNet_results/Dataset960_X/nnUNetTrainerSourceOnly__nnUNetResEncUNetMPlans__3d_fullres -f 0

Slices come from the raw dataset (``imagesTr``; images harmonised as the dataset convention asks).
The organ attention's segmenter S is an nnU-Net model trained on the source domain (any trainer and
configuration; the example's is ``nnUNetTrainerSourceOnly``, 3d_fullres, ResEnc M). Because S is
fixed, its softmax is computed once per source volume by nnU-Net's own predictor (sliding window,
mirroring, the folds given by ``-f`` averaged) and sliced with the images: an adaptation of
eq. 4's per-image S(X^s) to nnU-Net's 3D models. ``--no_attention`` trains the plain CycleGAN
(the ablation). Interrupted runs continue from the last finished epoch when run again. Slices are
memory-mapped from ``<output>/slice_cache`` during training, so memory does not grow with the number
of source volumes.
"""
from __future__ import annotations

import argparse
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from nnunet_uda.data.raw import find_raw_dataset, image_file, load_dataset_json, save_json
from nnunet_uda.domains import DomainTable
from nnunet_uda.gan.slices import CycleGANCases, UnpairedSlices, read_attention, read_slices, slice_size_of
from nnunet_uda.gan.training import CycleGANSettings, train_cyclegan
from nnunet_uda.pseudolabels.fold_predictions import fold_folder, predict_folds


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="nnUNetv2_uda_cyclegan_train", description=__doc__.splitlines()[0])
    parser.add_argument("-d", required=True, help="UDA raw dataset id or name (with a domain table)")
    parser.add_argument("--target", required=True, help="the target domain to translate into")
    parser.add_argument("-o", required=True, help="output folder (checkpoints, previews, generator_final.pth)")
    parser.add_argument("--segmenter", help="nnU-Net model folder trained on the source, for the organ attention")
    parser.add_argument("-f", nargs="+", default=["0"], help="the segmenter's folds (default: 0)")
    parser.add_argument("--no_attention", action="store_true", help="plain CycleGAN (the ablation)")
    parser.add_argument("--n_target", type=int, default=50, help="random target cases to train on (default: 50)")
    defaults = CycleGANSettings()
    for name in ("epochs", "iterations", "batch_size", "width", "n_blocks", "discriminator_layers", "seed"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name),
                            help=f"(default: {getattr(defaults, name)})")
    parser.add_argument("-device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


@contextmanager
def slice_cache(output: Path) -> Iterator[Path]:
    """``<output>/slice_cache`` for the memory-mapped slices (:mod:`nnunet_uda.gan.slices`), removed when
    training ends, finished or not."""
    cache = output / "slice_cache"
    cache.mkdir(exist_ok=True)
    try:
        yield cache
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    if not args.no_attention and not args.segmenter:
        raise SystemExit("nnUNetv2_uda_cyclegan_train: the organ attention needs --segmenter (an nnU-Net model "
                         "folder trained on the source domain), or pass --no_attention")
    raw = find_raw_dataset(args.d)
    dataset_json = load_dataset_json(raw)
    if len(dataset_json["channel_names"]) != 1:
        raise SystemExit(f"nnUNetv2_uda_cyclegan_train: {raw.name} has {len(dataset_json['channel_names'])} "
                         f"channels; the translation model maps one image channel")
    table = DomainTable.from_dataset_json(dataset_json, str(raw / "dataset.json"))
    try:
        cases = CycleGANCases.choose(table, args.target, args.n_target, args.seed)
    except ValueError as error:
        raise SystemExit(f"nnUNetv2_uda_cyclegan_train: {error}") from None
    ending = dataset_json["file_ending"]

    def image(case):
        return image_file(raw / "imagesTr", case, ending)
    size = slice_size_of([image(c) for c in cases.source + cases.target])
    output = Path(args.o)
    output.mkdir(parents=True, exist_ok=True)
    with slice_cache(output) as cache:
        attention = None
        if not args.no_attention:
            probabilities = output / "attention_probabilities"
            predict_folds(Path(args.segmenter), args.f, {c: [image(c)] for c in cases.source},
                          {c: table.domain_of(c) for c in cases.source}, probabilities, ending,
                          device=torch.device(args.device))
            attention = read_attention([[fold_folder(probabilities, f) / f"{c}.npz" for f in args.f]
                                        for c in cases.source], size, cache / "attention.f32")
        data = UnpairedSlices(read_slices([image(c) for c in cases.source], size, cache=cache / "source.f32"),
                              read_slices([image(c) for c in cases.target], size, cache=cache / "target.f32"),
                              attention)
        labels = read_slices([raw / "labelsTr" / f"{c}{ending}" for c in cases.source], size, fill=0.0,
                             dtype=np.uint8, cache=cache / "labels.u8")
        settings = CycleGANSettings(args.epochs, args.iterations, args.batch_size, not args.no_attention, args.width,
                                    args.n_blocks, args.discriminator_layers, args.seed)
        save_json({"dataset": raw.name, "target_domain": args.target, "source_modality": cases.source_modality,
                   "target_modality": cases.target_modality, "slice_size": list(size), "source_cases": cases.source,
                   "target_cases": cases.target, "segmenter": args.segmenter, "segmenter_folds": args.f},
                  output / "cyclegan.json")
        print(f"{len(cases.source)} {cases.source_modality} cases ({len(data.source)} slices) -> "
              f"{len(cases.target)} {args.target} cases ({len(data.target)} slices), slices {size[0]} x {size[1]}, "
              f"{'organ attention' if attention is not None else 'no attention'}")
        history = train_cyclegan(data, settings, output, args.device, labels)
    print("final epoch: " + ", ".join(f"{k} {v:.3f}" for k, v in history[-1].items())
          + f"\ngenerator: {output / 'generator_final.pth'}; previews and losses.png in {output}")


if __name__ == "__main__":
    main()
