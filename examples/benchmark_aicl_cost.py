"""What AICL's losses cost: PGPS + l_fpc against dense voxel contrast, and one training iteration.

1. On one feature map (batch 2, C = 128 channels, n^3 voxels, six organs), forward + backward of
   PGPS + l_fpc (K organ cuboids: O(K ps^3) features, a (2K)^2 similarity matrix) against a dense
   voxel-level InfoNCE (every voxel an anchor, positives its class, negatives the other classes:
   a (2 n^3)^2 similarity matrix), the paper's O(K ps^3) against O((HWD)^2) (section 2.2.1). Time is
   the median of repeats; peak memory is the extra peak over the inputs (CUDA allocator statistics
   on a GPU; on a CPU the peak resident memory of a fresh process per measurement).
2. One ``nnUNetTrainerAICL`` training iteration (all four terms active, past the ramps) against one
   ``nnUNetTrainerUDA`` iteration on the same plans and batches (goal: ratio at most 1.15).

    python examples/benchmark_aicl_cost.py --work benchmark_output/aicl_cost [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from nnunet_uda.losses.patch_contrast import info_nce_terms, patch_contrastive_loss

CHANNELS, ORGANS, BATCH, TEMPERATURE = 128, 6, 2, 0.07


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="benchmark_output/aicl_cost")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 12, 16, 20, 32],
                        help="feature map edges n (a patch of 4n)")
    parser.add_argument("--dense_limit", type=int, default=20, help="largest n for the dense loss (memory)")
    parser.add_argument("--patch", type=int, default=5, help="PGPS cuboid edge ps")
    parser.add_argument("--iterations", type=int, default=6, help="timed training iterations per trainer")
    parser.add_argument("--shape", type=int, default=40, help="phantom edge for the iteration timing")
    parser.add_argument("--one", nargs=2, metavar=("LOSS", "N"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def dense_voxel_infonce(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised InfoNCE over every voxel (l_fpc's contrast with each voxel an anchor and a group of
    its own): the dense comparator of section 2.2.1."""
    z = features.flatten(2).transpose(1, 2).flatten(0, 1)  # (B * V, C)
    per_anchor, _ = info_nce_terms(z, labels.flatten(), torch.arange(len(z), device=z.device), temperature)
    return per_anchor.mean()


def inputs(n: int, device: str):
    g = torch.Generator().manual_seed(n)
    features = torch.randn(BATCH, CHANNELS, n, n, n, generator=g).to(device).requires_grad_()
    coarse = torch.randint(0, ORGANS + 1, (BATCH, 1, 4, 4, 4), generator=g).float()
    labels = F.interpolate(coarse, size=(n, n, n), mode="nearest")[:, 0].long().to(device)
    return features, labels


def measure(loss: str, n: int, device: str, patch: int, repeats: int = 3) -> dict:
    from nnunet_uda.nn.organ_patches import OrganPatchSampler

    features, labels = inputs(n, device)
    sampler = OrganPatchSampler((patch,) * 3)

    def step():
        if loss == "dense":
            value = dense_voxel_infonce(features, labels, TEMPERATURE)
        else:
            probs = F.one_hot(labels, ORGANS + 1).movedim(-1, 1).float()
            patches = sampler(features, probs)
            value = patch_contrastive_loss(patches.embeddings, patches.present, TEMPERATURE)
        value.backward()
        features.grad = None
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        step()  # warm-up
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:  # the resident peak never goes down: measure from before the first step
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"loss": loss, "n": n, "seconds": statistics.median(times), "peak_mb": max(peak - base, 0) / 2 ** 20}


def measure_in_fresh_process(loss: str, n: int, args) -> dict:
    """CPU peak memory needs a process of its own per measurement (the peak never goes down)."""
    out = subprocess.run([sys.executable, __file__, "--one", loss, str(n), "--device", args.device,
                          "--patch", str(args.patch)], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def loss_costs(args) -> list[dict]:
    rows = []
    for n in args.sizes:
        pgps = measure_in_fresh_process("pgps", n, args)
        dense = measure_in_fresh_process("dense", n, args) if n <= args.dense_limit else None
        rows.append({"n": n, "pgps": pgps, "dense": dense})
        print(f"n={n}: PGPS+l_fpc {pgps['seconds'] * 1e3:.1f} ms / {pgps['peak_mb']:.0f} MB; dense "
              + (f"{dense['seconds'] * 1e3:.1f} ms / {dense['peak_mb']:.0f} MB" if dense else "skipped"), flush=True)
    return rows


def iteration_costs(args, work: Path) -> dict:
    from nnunet_uda.pipeline import PhantomSettings, Runner, nnunet_environment, prepare_phantom

    env = nnunet_environment(work, processes=1)  # nnU-Net's planner fails with 0 (set_num_threads(0))
    os.environ.update(env)  # nnU-Net reads its folders from the environment of this process
    dataset_id = 980
    run = Runner(env, log=work / "commands.log")
    prepare_phantom(run, dataset_id, PhantomSettings(shape=(args.shape,) * 3, n_source=6, n_target=4, n_test=1,
                                                     flags=("--partial_labels", "--pseudo_labels", "reg")))
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_uda.planning import DEFAULT_PLANS

    seconds = {}
    for name in ("nnUNetTrainerUDA", "nnUNetTrainerAICL"):
        torch.manual_seed(0)
        trainer = get_trainer_from_args(str(dataset_id), "3d_fullres", 0, name, DEFAULT_PLANS,
                                        device=torch.device(args.device))
        trainer.initialize()
        loader, _ = trainer.get_dataloaders()
        batches = [next(loader) for _ in range(args.iterations + 1)]
        trainer.network.train()
        trainer.counters.values["iterations"] = 40 * trainer.num_iterations_per_epoch  # past every ramp
        trainer.train_step(batches[0])  # warm-up
        times = []
        for batch in batches[1:]:
            start = time.perf_counter()
            trainer.train_step(batch)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        seconds[name] = statistics.median(times)
        patch = trainer.configuration_manager.patch_size
        print(f"{name}: {seconds[name]:.3f} s per iteration (median of {len(times)}), patch {patch}", flush=True)
    return {"patch_size": list(patch), "seconds": seconds,
            "ratio": seconds["nnUNetTrainerAICL"] / seconds["nnUNetTrainerUDA"]}


def report(rows: list[dict], iterations: dict, args) -> str:
    lines = [f"PGPS (ps = {args.patch}) + l_fpc against dense voxel InfoNCE, forward + backward, batch {BATCH}, "
             f"{CHANNELS} channels, {ORGANS} organs, {args.device}:", "",
             "| feature map | PGPS + l_fpc | dense voxel InfoNCE | time ratio | PGPS peak | dense peak |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        p, d = row["pgps"], row["dense"]
        dense_cells = (f"{d['seconds'] * 1e3:.1f} ms | {d['seconds'] / p['seconds']:.0f}x"
                       if d else "not run (memory) | -")
        lines.append(f"| {row['n']}^3 | {p['seconds'] * 1e3:.1f} ms | {dense_cells} | {p['peak_mb']:.0f} MB | "
                     + (f"{d['peak_mb']:.0f} MB |" if d else "- |"))
    lines += ["", f"One training iteration, phantom {args.shape}^3, patch {iterations['patch_size']}, batch 2, "
                  f"{args.device}: nnUNetTrainerUDA {iterations['seconds']['nnUNetTrainerUDA']:.3f} s, "
                  f"nnUNetTrainerAICL {iterations['seconds']['nnUNetTrainerAICL']:.3f} s, ratio "
                  f"{iterations['ratio']:.3f} (goal <= 1.15)."]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.device, args.patch)))
        return
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = loss_costs(args)
    iterations = iteration_costs(args, work)
    text = report(rows, iterations, args)
    (work / "aicl_cost.json").write_text(json.dumps({"losses": rows, "iterations": iterations}, indent=2))
    (work / "aicl_cost.md").write_text(text + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
