"""Cost of one co-training iteration against one vanilla nnU-Net iteration, on the same plans and batch.

Builds a semi-supervised phantom (``nnUNetv2_uda_phantom --semi_supervised``), plans it, then times
``train_step`` of nnU-Net's ``nnUNetTrainer``, ``nnUNetTrainerCPS``, ``nnUNetTrainerDVCL`` (and a DVCL variant)
and ``nnUNetTrainerDACL`` (and its CPS row) in this process on one fixed batch, so data loading is left out.
Prints the median seconds per iteration, the ratio to vanilla, the contrastive terms' share of the DVCL and
DACL steps (against their CPS baselines) and, on a GPU, the peak memory; then DACL with a full class memory bank
of L = 100, 1,000 and 10,000 features, with the density computation's share of the step.
Results: docs/methods/dvcl.md#cost, docs/methods/dacl.md#cost.

    python examples/benchmark_cotraining_cost.py --work benchmark_output/cotraining_cost [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from nnunet_uda.benchmarking import build_trainer, time_train_steps
from nnunet_uda.pipeline import PhantomSettings, Runner, nnunet_environment, prepare_phantom

TRAINERS = ("nnUNetTrainer", "nnUNetTrainerCPS", "nnUNetTrainerDVCL_HqCL", "nnUNetTrainerDVCL",
            "nnUNetTrainerDACL_CPS", "nnUNetTrainerDACL")
BANK_SIZES = (100, 1000, 10000)


def time_dacl_bank(preprocessed: Path, device, batch: dict, size: int, warmup: int, repeats: int):
    """Seconds per DACL iteration with a full bank of ``size`` random features per class, and the share of the
    step spent in the density computation (eqs. 3-5)."""
    import nnunet_uda.losses.dacl as dacl

    trainer = build_trainer("nnUNetTrainerDACL", preprocessed, device, bank_size=size)
    bank = trainer.contrast.bank.to(device)
    bank.features.normal_()
    bank.count.fill_(size)
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
        seconds, _ = time_train_steps(trainer, batch, warmup, repeats)
    finally:
        dacl.knn_density = density
    return seconds, statistics.median(spent[warmup:]) / seconds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="benchmark_output/cotraining_cost")
    parser.add_argument("--dataset", type=int, default=993)
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 48, 48))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    run = Runner(nnunet_environment(work), log=work / "commands.log")
    raw = prepare_phantom(run, args.dataset, PhantomSettings(tuple(args.shape), n_source=10, n_test=1,
                                                             flags=("--semi_supervised", "0.5")), folds=2)
    os.environ.update({k: run.env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    preprocessed = Path(run.env["nnUNet_preprocessed"]) / raw.name
    device = torch.device(args.device)
    torch.manual_seed(0)
    batch, rows = None, []
    for name in TRAINERS:
        trainer = build_trainer(name, preprocessed, device)
        if batch is None:  # one batch for all: a CPS batch (unlabeled first, labeled last)
            loader = build_trainer("nnUNetTrainerCPS", preprocessed, device).get_dataloaders()[0]
            batch = next(loader)
        seconds, memory = time_train_steps(trainer, batch, args.warmup, args.repeats)
        rows.append((name, seconds, memory if device.type == "cuda" else None))
        print(f"{name}: {seconds:.3f} s per iteration", flush=True)
    vanilla = rows[0][1]
    patch = build_trainer("nnUNetTrainer", preprocessed, device).configuration_manager.patch_size
    lines = [f"One iteration on {args.device}, patch {list(patch)}, batch {len(batch['keys'])} "
             f"(median of {args.repeats} after {args.warmup} warm-up):", "",
             "| trainer | s per iteration | ratio to vanilla | peak GPU MB |", "|---|---|---|---|"]
    lines += [f"| `{n}` | {s:.3f} | {s / vanilla:.2f} | {m:.0f} |" if m is not None else
              f"| `{n}` | {s:.3f} | {s / vanilla:.2f} | n/a |" for n, s, m in rows]
    seconds = {n: s for n, s, _ in rows}
    for method, baseline in (("nnUNetTrainerDVCL", "nnUNetTrainerCPS"), ("nnUNetTrainerDACL", "nnUNetTrainerDACL_CPS")):
        share = (seconds[method] - seconds[baseline]) / seconds[method]
        lines.append(f"\nContrastive terms' share of the `{method}` step (against `{baseline}`): {share:.0%}.")
    lines += ["", "`nnUNetTrainerDACL` with a full class memory bank of L features per class:", "",
              "| L | s per iteration | ratio to vanilla | density's share of the step |", "|---|---|---|---|"]
    for size in BANK_SIZES:
        step, density = time_dacl_bank(preprocessed, device, batch, size, args.warmup, args.repeats)
        print(f"nnUNetTrainerDACL, L = {size}: {step:.3f} s per iteration, density {density:.0%}", flush=True)
        lines.append(f"| {size} | {step:.3f} | {step / vanilla:.2f} | {density:.0%} |")
    text = "\n".join(lines) + "\n"
    (work / "cotraining_cost.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
