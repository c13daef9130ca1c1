"""Cost of one co-training iteration against one vanilla nnU-Net iteration, on the same plans and batch.

Builds a semi-supervised phantom (``nnUNetv2_uda_phantom --semi_supervised``), plans it, draws one batch from
CPS's loader and times ``train_step`` of nnU-Net's ``nnUNetTrainer``, ``nnUNetTrainerCPS``, ``nnUNetTrainerDVCL``
(and a DVCL variant) and ``nnUNetTrainerDACL`` (and its CPS row) on it, each in a fresh process (so the peak
memory is its own: the GPU allocator's peak on CUDA, the process's peak resident memory on the CPU), data loading
left out. Prints the median seconds per iteration, the ratio to vanilla, the peak memory and the contrastive
terms' share of the DVCL and DACL steps (against their CPS baselines); then DACL with a full class memory bank of
L = 100, 1,000 and 10,000 features, with the density computation's share of the step.
Results: docs/methods/dvcl.md#cost, docs/methods/dacl.md#cost.

    python examples/benchmark_cotraining_cost.py --work benchmark_output/cotraining_cost [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from nnunet_uda.benchmarking import build_trainer, measure_in_fresh_process, time_train_steps
from nnunet_uda.pipeline import PhantomSettings, Runner, nnunet_environment, prepare_phantom

TRAINERS = ("nnUNetTrainer", "nnUNetTrainerCPS", "nnUNetTrainerDVCL_HqCL", "nnUNetTrainerDVCL",
            "nnUNetTrainerDACL_CPS", "nnUNetTrainerDACL")
BANK_SIZES = (100, 1000, 10000)


def time_dacl_bank(trainer, batch: dict, warmup: int, repeats: int) -> tuple[float, float, float]:
    """Seconds per iteration and peak memory of ``trainer`` (DACL) with its bank filled with random features, and
    the share of the step spent in the density computation (eqs. 3-5)."""
    import nnunet_uda.losses.dacl as dacl

    device = trainer.device
    bank = trainer.contrast.bank.to(device)
    bank.features.normal_()
    bank.count.fill_(bank.size)
    spent, density = [], dacl.knn_density

    def timed(*args, **kwargs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = density(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        spent.append(time.perf_counter() - start)
        return result

    dacl.knn_density = timed
    try:
        seconds, peak = time_train_steps(trainer, batch, warmup, repeats)
    finally:
        dacl.knn_density = density
    return seconds, peak, statistics.median(spent[warmup:]) / seconds


def measure(args, name: str, preprocessed: Path) -> dict:
    """In this (fresh) process: one trainer timed on the saved batch; with ``args.bank``, DACL with a full bank."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    batch = torch.load(Path(args.work) / "batch.pt", weights_only=False)
    if args.bank:
        trainer = build_trainer(name, preprocessed, device, bank_size=args.bank)
        seconds, peak, density = time_dacl_bank(trainer, batch, args.warmup, args.repeats)
        return {"seconds": seconds, "peak_mb": peak, "density": density}
    trainer = build_trainer(name, preprocessed, device)
    seconds, peak = time_train_steps(trainer, batch, args.warmup, args.repeats)
    return {"seconds": seconds, "peak_mb": peak, "patch": list(trainer.configuration_manager.patch_size)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="benchmark_output/cotraining_cost")
    parser.add_argument("--dataset", type=int, default=993)
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 48, 48))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", metavar="TRAINER", help=argparse.SUPPRESS)
    parser.add_argument("--bank", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    work = Path(args.work).resolve()
    args.work = str(work)
    run = Runner(nnunet_environment(work), log=work / "commands.log")
    os.environ.update({k: run.env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    if args.one:
        raw = next(Path(run.env["nnUNet_raw"]).glob(f"Dataset{args.dataset:03d}_*"))
        print(json.dumps(measure(args, args.one, Path(run.env["nnUNet_preprocessed"]) / raw.name)))
        return
    work.mkdir(parents=True, exist_ok=True)
    raw = prepare_phantom(run, args.dataset, PhantomSettings(tuple(args.shape), n_source=10, n_test=1,
                                                             flags=("--semi_supervised", "0.5")), folds=2)
    torch.manual_seed(0)
    loader = build_trainer("nnUNetTrainerCPS", Path(run.env["nnUNet_preprocessed"]) / raw.name,
                           torch.device("cpu")).get_dataloaders()[0]
    torch.save(next(loader), work / "batch.pt")  # one batch for all: a CPS batch (unlabeled first, labeled last)
    common = ["--work", str(work), "--dataset", str(args.dataset), "--device", args.device, "--warmup",
              str(args.warmup), "--repeats", str(args.repeats)]
    results = {}
    for name in TRAINERS:
        results[name] = measure_in_fresh_process(__file__, common + ["--one", name])
        print(f"{name}: {results[name]['seconds']:.3f} s per iteration, peak {results[name]['peak_mb']:.0f} MB",
              flush=True)
    vanilla = results[TRAINERS[0]]["seconds"]
    memory = "peak GPU MB" if args.device.startswith("cuda") else "peak resident MB"
    lines = [f"One iteration on {args.device}, patch {results[TRAINERS[0]]['patch']}, batch 2 (one unlabeled, one "
             f"labeled case), median of {args.repeats} after {args.warmup} warm-up, each trainer in its own process:",
             "", f"| trainer | s per iteration | ratio to vanilla | {memory} |", "|---|---|---|---|"]
    lines += [f"| `{n}` | {r['seconds']:.3f} | {r['seconds'] / vanilla:.2f} | {r['peak_mb']:.0f} |"
              for n, r in results.items()]
    for method, baseline in (("nnUNetTrainerDVCL", "nnUNetTrainerCPS"), ("nnUNetTrainerDACL", "nnUNetTrainerDACL_CPS")):
        share = (results[method]["seconds"] - results[baseline]["seconds"]) / results[method]["seconds"]
        lines.append(f"\nContrastive terms' share of the `{method}` step (against `{baseline}`): {share:.0%}.")
    lines += ["", "`nnUNetTrainerDACL` with a full class memory bank of L features per class:", "",
              f"| L | s per iteration | ratio to vanilla | density's share of the step | {memory} |",
              "|---|---|---|---|---|"]
    for size in BANK_SIZES:
        r = measure_in_fresh_process(__file__, common + ["--one", "nnUNetTrainerDACL", "--bank", str(size)])
        print(f"nnUNetTrainerDACL, L = {size}: {r['seconds']:.3f} s per iteration, density {r['density']:.0%}",
              flush=True)
        lines.append(f"| {size} | {r['seconds']:.3f} | {r['seconds'] / vanilla:.2f} | {r['density']:.0%} | "
                     f"{r['peak_mb']:.0f} |")
    text = "\n".join(lines) + "\n"
    (work / "cotraining_cost.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
