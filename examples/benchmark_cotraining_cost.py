"""Cost of one co-training iteration against one vanilla nnU-Net iteration, on the same plans and batch.

Builds a semi-supervised phantom (``nnUNetv2_uda_phantom --semi_supervised``), plans it, then times
``train_step`` of nnU-Net's ``nnUNetTrainer``, ``nnUNetTrainerCPS`` and ``nnUNetTrainerDVCL`` (and the DVCL
variants) in this process on one fixed batch, so data loading is left out. Prints the median seconds per
iteration, the ratio to vanilla, the contrastive terms' share of the DVCL step (DVCL against CPS) and, on a GPU,
the peak memory. Results: docs/methods/dvcl.md#cost.

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

from nnunet_uda.pipeline import PhantomSettings, Runner, nnunet_environment, prepare_phantom
from nnunet_uda.planning import DEFAULT_PLANS

TRAINERS = ("nnUNetTrainer", "nnUNetTrainerCPS", "nnUNetTrainerDVCL_HqCL", "nnUNetTrainerDVCL")


def build(name: str, preprocessed: Path, device: torch.device):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_uda.training import TRAINERS as PLUGIN

    plans = json.loads((preprocessed / f"{DEFAULT_PLANS}.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    trainer = (PLUGIN.get(name) or nnUNetTrainer)(plans, "3d_fullres", 0, dataset_json, device=device)
    trainer.initialize()
    trainer.on_train_start = None
    return trainer


def time_steps(trainer, batch: dict, warmup: int, repeats: int) -> tuple[float, float | None]:
    """Median seconds of ``train_step`` on ``batch``, and the peak GPU memory in MB (None on the CPU)."""
    trainer.network.train()
    for module in getattr(trainer, "partner_modules", lambda: [])():
        module.train()
    cuda = trainer.device.type == "cuda"
    times = []
    for i in range(warmup + repeats):
        if cuda:
            torch.cuda.synchronize()
            if i == warmup:
                torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer.train_step(batch)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None


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
        trainer = build(name, preprocessed, device)
        if batch is None:  # one batch for all: a CPS batch (unlabeled first, labeled last)
            loader = build("nnUNetTrainerCPS", preprocessed, device).get_dataloaders()[0]
            batch = next(loader)
        trainer.n_unlabeled = 1  # the CPS batch's layout, for every co-training trainer
        seconds, memory = time_steps(trainer, batch, args.warmup, args.repeats)
        rows.append((name, seconds, memory))
        print(f"{name}: {seconds:.3f} s per iteration", flush=True)
    vanilla = rows[0][1]
    patch = build("nnUNetTrainer", preprocessed, device).configuration_manager.patch_size
    lines = [f"One iteration on {args.device}, patch {list(patch)}, batch {len(batch['keys'])} "
             f"(median of {args.repeats} after {args.warmup} warm-up):", "",
             "| trainer | s per iteration | ratio to vanilla | peak GPU MB |", "|---|---|---|---|"]
    lines += [f"| `{n}` | {s:.3f} | {s / vanilla:.2f} | {m:.0f} |" if m is not None else
              f"| `{n}` | {s:.3f} | {s / vanilla:.2f} | n/a |" for n, s, m in rows]
    cps, dvcl = rows[1][1], rows[-1][1]
    lines += ["", f"Contrastive terms' share of the DVCL step (DVCL against CPS): {(dvcl - cps) / dvcl:.0%}."]
    text = "\n".join(lines) + "\n"
    (work / "cotraining_cost.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
