"""Cost of one CISFA iteration against one nnUNetTrainerUDA iteration, on the same plans and batch layout, in
``3d_fullres`` and ``2d``.

Builds an unpaired phantom (CT labeled, MRI unlabeled), plans both configurations, draws one batch per
configuration and trainer from the trainer's own loader (target cases first, source cases last; nnUNetTrainerUDA's
augmented by the loader's workers, CISFA's un-augmented, its augmentation part of its step) and times ``train_step``
of ``nnUNetTrainerUDA`` and ``nnUNetTrainerCISFA`` on it, each in a fresh process (so the peak memory is its own: the
GPU allocator's peak on CUDA, the process's peak resident memory on the CPU), loading left out. Prints
the median seconds per iteration, the ratio (goal: at most 2.0, the generator being inherent) and the peak memory.
Results: docs/methods/cisfa.md#cost.

    python examples/benchmark_cisfa_cost.py --work benchmark_output/cisfa_cost [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from nnunet_uda.benchmarking import build_trainer, measure_in_fresh_process, time_train_steps
from nnunet_uda.pipeline import PhantomSettings, Runner, nnunet_environment, prepare_phantom

TRAINERS = ("nnUNetTrainerUDA", "nnUNetTrainerCISFA")
CONFIGURATIONS = ("3d_fullres", "2d")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="benchmark_output/cisfa_cost")
    parser.add_argument("--dataset", type=int, default=994)
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 48, 48))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", nargs=2, metavar=("TRAINER", "CONFIGURATION"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure(args, trainer_name: str, configuration: str, preprocessed: Path) -> dict:
    """In this (fresh) process: one trainer timed on a batch of ``configuration`` from its own loader."""
    torch.manual_seed(0)
    trainer = build_trainer(trainer_name, preprocessed, torch.device(args.device), configuration)
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()  # as on_train_start
    batch = next(trainer.dataloader_train)  # one target case, then one source case
    seconds, peak = time_train_steps(trainer, batch, args.warmup, args.repeats)
    return {"seconds": seconds, "peak_mb": peak, "patch": list(trainer.configuration_manager.patch_size)}


def main(argv=None) -> None:
    args = parse_args(argv)
    work = Path(args.work).resolve()
    args.work = str(work)
    env = nnunet_environment(work, processes=1)
    os.environ.update(env)
    preprocessed = Path(env["nnUNet_preprocessed"])
    if args.one:
        raw = next(Path(env["nnUNet_raw"]).glob(f"Dataset{args.dataset:03d}_*"))
        print(json.dumps(measure(args, *args.one, preprocessed / raw.name)))
        return
    work.mkdir(parents=True, exist_ok=True)
    run = Runner(env, log=work / "commands.log")
    raw = prepare_phantom(run, args.dataset, PhantomSettings(tuple(args.shape), n_source=6, n_target=4, n_test=1),
                          configurations=CONFIGURATIONS)
    rows = []
    for configuration in CONFIGURATIONS:
        for name in TRAINERS:
            result = measure_in_fresh_process(__file__, [
                "--work", str(work), "--dataset", str(args.dataset), "--device", args.device, "--warmup",
                str(args.warmup), "--repeats", str(args.repeats), "--one", name, configuration])
            rows.append((configuration, name, result))
            print(f"{configuration} {name}: {result['seconds']:.3f} s per iteration, peak {result['peak_mb']:.0f} MB",
                  flush=True)
    memory = "peak GPU MB" if args.device.startswith("cuda") else "peak resident MB"
    lines = [f"One iteration on {args.device}, batch 2 (one target, one source case), median of {args.repeats} after "
             f"{args.warmup} warm-up, each trainer in its own process:", "",
             f"| configuration | patch | trainer | s per iteration | ratio to nnUNetTrainerUDA | {memory} |",
             "|---|---|---|---|---|---|"]
    for configuration, name, result in rows:
        base = next(r for c, n, r in rows if c == configuration and n == TRAINERS[0])
        lines.append(f"| {configuration} | {result['patch']} | `{name}` | {result['seconds']:.3f} | "
                     f"{result['seconds'] / base['seconds']:.2f} | {result['peak_mb']:.0f} |")
    text = "\n".join(lines) + "\n"
    (work / "cisfa_cost.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
