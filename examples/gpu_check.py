"""GPU check: every trainer family for a few iterations as nnU-Net trains on a GPU (AMP and torch.compile), and the
prediction time of a ResEnc M model per FLARE-sized case.

Builds two phantoms (CT labeled with unlabeled T1 and T2, for the domain-adaptation trainers; a semi-supervised CT
one, half labeled, for the co-training ones), plans them with ResEnc M, then for each trainer, in this process:
builds it as ``nnUNetv2_train`` does (on CUDA nnU-Net compiles the network unless ``nnUNet_compile`` is false, and
trains under autocast with a gradient scaler; the co-training base compiles network B alike), draws one batch from
its own loader and times ``train_step`` on it: the first step (compilation included), then the median of
``--repeats`` after ``--warmup``. Per trainer: whether every logged loss term stayed finite, seconds per iteration
against nnU-Net's ``nnUNetTrainer`` on the same plans, peak GPU memory. Then nnU-Net's sliding-window prediction
(``nnUNetPredictor``, tile step 0.5, Gaussian weighting, as ``nnUNetv2_predict``) of a ``--case_shape`` volume by
ResEnc M's 3d_fullres network (128^3 patch, 14 outputs), with and without mirroring, against FLARE's 60 s per case.

Writes ``gpu_check.md`` (the table of docs/benchmarks.md#gpu-check) and exits non-zero if any loss was not finite.
About 5 minutes on one H200; ``--device cpu`` runs the same code without AMP and compile, for a dry run
(``--shape 24 24 24 --case_shape 64 64 64 --repeats 1``).

    python examples/gpu_check.py --work benchmark_output/gpu_check
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch
from torch._dynamo import OptimizedModule

from nnunet_uda.benchmarking import RESENC_M, build_trainer, time_train_steps
from nnunet_uda.pipeline import PhantomSettings, Runner, nnunet_environment, prepare_phantom

#: the main trainer of every family, by the phantom it trains on; vanilla nnU-Net is the reference
TRAINERS = {"uda": ("nnUNetTrainer", "nnUNetTrainerUDA", "nnUNetTrainerSourceOnly", "nnUNetTrainerAICL",
                    "nnUNetTrainerAICL_ColdStart", "nnUNetTrainerCISFA", "nnUNetTrainerSelfTraining"),
            "semi": ("nnUNetTrainerLabeledOnly", "nnUNetTrainerCPS", "nnUNetTrainerDVCL", "nnUNetTrainerDACL")}
FLARE_SECONDS = 60


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="benchmark_output/gpu_check")
    parser.add_argument("--dataset", type=int, default=997, help="first dataset id (two are used)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 64), help="phantom grid size")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--no_compile", action="store_true", help="nnUNet_compile=false (nnU-Net's default: true)")
    parser.add_argument("--warmup", type=int, default=2, help="steps after the first, before timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--case_shape", type=int, nargs=3, default=(160, 320, 320),
                        help="the predicted volume in preprocessed voxels (an abdominal scan at ResEnc M's spacing)")
    return parser.parse_args(argv)


def first_and_median_step(trainer, batch: dict, warmup: int, repeats: int) -> tuple[float, float, float]:
    """Seconds of the first ``train_step`` (compilation included), the median after ``warmup`` more, peak MB."""
    trainer.on_train_epoch_start()
    synchronize(trainer.device)
    start = time.perf_counter()
    trainer.train_step(batch)
    synchronize(trainer.device)
    first = time.perf_counter() - start
    median, peak = time_train_steps(trainer, batch, warmup, repeats)
    return first, median, peak


def finite_losses(trainer, batch: dict) -> bool:
    """One more step: its loss and every term the trainer logged in all steps so far are finite."""
    loss = float(trainer.train_step(batch)["loss"])
    logged = [v for values in getattr(trainer, "_epoch_scalars", {}).values() for v in values]
    return all(map(math.isfinite, [loss, *logged]))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def check_trainer(name: str, preprocessed: Path, device, args) -> dict:
    trainer = build_trainer(name, preprocessed, device)
    batch = next(trainer.get_dataloaders()[0])  # its own loader: its batch layout (domains, labeled share)
    first, median, peak = first_and_median_step(trainer, batch, args.warmup, args.repeats)
    compiled = isinstance(trainer.network, OptimizedModule) or isinstance(
        getattr(trainer.network, "module", None), OptimizedModule)
    row = dict(trainer=name, finite=finite_losses(trainer, batch), first=first, seconds=median,
               peak=peak if device.type == "cuda" else None, amp=trainer.grad_scaler is not None, compiled=compiled)
    print(f"{name}: first step {first:.1f} s, {median:.3f} s per iteration, finite {row['finite']}", flush=True)
    return row


def prediction_seconds(preprocessed: Path, device, case_shape, mirroring: bool) -> float:
    """One sliding-window prediction of a random ``case_shape`` volume by ResEnc M's network, after a warm-up, as
    ``nnUNetv2_predict`` runs it by default (not compiled)."""
    import json

    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_uda.planning import DEFAULT_PLANS

    plans = json.loads((preprocessed / f"{DEFAULT_PLANS}.json").read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = [128, 128, 128]
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    manager = PlansManager(plans)
    heads = manager.get_label_manager(dataset_json).num_segmentation_heads
    network = ResidualEncoderUNet(**dict(RESENC_M, num_classes=heads), deep_supervision=False)
    predictor = nnUNetPredictor(use_mirroring=mirroring, device=device, verbose=False, allow_tqdm=False)
    training_compile = os.environ.pop("nnUNet_compile")  # nnUNetv2_predict compiles only when this is set true
    try:
        predictor.manual_initialization(network, manager, manager.get_configuration("3d_fullres"), None,
                                        dataset_json, "nnUNetTrainer", (0, 1, 2))
    finally:
        os.environ["nnUNet_compile"] = training_compile
    image = torch.randn(1, *case_shape)
    predictor.predict_sliding_window_return_logits(image[:, :128, :128, :128])  # warm-up
    synchronize(device)
    start = time.perf_counter()
    predictor.predict_sliding_window_return_logits(image)
    synchronize(device)
    return time.perf_counter() - start


def table(rows: list[dict], predictions: dict[bool, float], args) -> str:
    vanilla = rows[0]["seconds"]
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    lines = [f"{device}, phantom {' x '.join(map(str, args.shape))}, batch {args.batch_size}; median of "
             f"{args.repeats} iterations after the first and {args.warmup} more:", "",
             "| trainer | AMP | compiled | losses finite | first step (s) | s per iteration | ratio to vanilla | "
             "peak GPU MB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak']:.0f}" if r["peak"] is not None else "n/a"
        lines.append(f"| `{r['trainer']}` | {'yes' if r['amp'] else 'no'} | {'yes' if r['compiled'] else 'no'} | "
                     f"{'yes' if r['finite'] else '**no**'} | {r['first']:.1f} | {r['seconds']:.3f} | "
                     f"{r['seconds'] / vanilla:.2f} | {peak} |")
    lines += ["", f"ResEnc M's network (128^3 patch), one {' x '.join(map(str, args.case_shape))} case through "
              f"nnU-Net's sliding window: {predictions[True]:.1f} s with mirroring (8 flips), {predictions[False]:.1f} "
              f"s without; FLARE allows {FLARE_SECONDS} s per case."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device; run it on a GPU machine, or pass --device cpu for a dry run")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run = Runner(nnunet_environment(work, processes=1), log=work / "commands.log")
    os.environ.update({k: run.env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")},
                      nnUNet_n_proc_DA="0", nnUNet_compile="false" if args.no_compile else "true")
    phantoms = {"uda": PhantomSettings(tuple(args.shape), n_source=5, n_target=5, n_test=1),
                "semi": PhantomSettings(tuple(args.shape), n_source=10, n_test=1, flags=("--semi_supervised", "0.5"))}
    preprocessed = {}
    for i, (kind, settings) in enumerate(phantoms.items()):
        raw = prepare_phantom(run, args.dataset + i, settings, folds=2, batch_size=args.batch_size)
        preprocessed[kind] = Path(run.env["nnUNet_preprocessed"]) / raw.name
    torch.manual_seed(0)
    rows = [check_trainer(name, preprocessed[kind], device, args) for kind, names in TRAINERS.items()
            for name in names]
    predictions = {m: prediction_seconds(preprocessed["uda"], device, args.case_shape, m) for m in (True, False)}
    text = table(rows, predictions, args)
    (work / "gpu_check.md").write_text(text)
    print("\n" + text)
    return 0 if all(r["finite"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
