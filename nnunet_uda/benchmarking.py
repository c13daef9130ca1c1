"""Shared pieces of the benchmark scripts (``examples/benchmark_*.py``): the target-domain means and the share of
the floor-to-ceiling gap closed of the effectiveness tables; for the cost benchmarks, a trainer built as
``nnUNetv2_train`` builds it, in this process, and the median time of its ``train_step`` on fixed batches, so data
loading is left out, each measurement in a fresh process of its own."""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from nnunet_uda.planning import DEFAULT_PLANS

#: nnU-Net's ResEnc M 3d_fullres network as its planner (nnUNetPlannerResEncM) makes it for a 128^3 patch at
#: isotropic spacing: 6 stages, features doubling from 32 to 320, 1-3-4-6-6-6 residual blocks per encoder stage;
#: 14 outputs (FLARE's 13 organs and the background)
RESENC_M = dict(input_channels=1, n_stages=6, features_per_stage=[32, 64, 128, 256, 320, 320], conv_op=nn.Conv3d,
                kernel_sizes=3, strides=[1, 2, 2, 2, 2, 2], n_blocks_per_stage=[1, 3, 4, 6, 6, 6], num_classes=14,
                n_conv_per_stage_decoder=[1] * 5, conv_bias=True, norm_op=nn.InstanceNorm3d,
                norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


def target_mean(means: dict, targets, metric: str = "dice", organ: str = "average") -> float:
    """``metric`` of ``organ`` averaged over the ``targets`` domains of an evaluation's ``mean``."""
    return statistics.fmean(means[d][organ][metric] for d in targets)


def gap_closed(dice: float, floor: float, ceiling: float | None, min_gap: float = 0.01) -> str:
    """The share of the floor-to-ceiling gap a Dice closes, as a signed percentage; "n/a" where the ceiling is not
    ``min_gap`` above the floor (a share of no gap would be noise)."""
    if ceiling is None or ceiling - floor < min_gap:
        return "n/a"
    return f"{(dice - floor) / (ceiling - floor):+.0%}"


def build_trainer(name: str, preprocessed: Path, device: torch.device, configuration: str = "3d_fullres",
                  fold: int | str = 0, **attributes):
    """The plugin trainer ``name`` (or nnU-Net's ``nnUNetTrainer``), a subclass with ``attributes`` set if any,
    initialised on ``device`` from the dataset's preprocessed folder (``nnUNet_preprocessed`` and
    ``nnUNet_results`` must be set in the environment)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_uda.training import TRAINERS

    trainer_class = TRAINERS.get(name) or nnUNetTrainer
    if attributes:
        trainer_class = type(name, (trainer_class,), attributes)
    plans = json.loads((Path(preprocessed) / f"{DEFAULT_PLANS}.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((Path(preprocessed) / "dataset.json").read_text())
    trainer = trainer_class(plans, configuration, fold, dataset_json, device=device)
    trainer.initialize()
    return trainer


def time_train_steps(trainer, batch: dict, warmup: int, repeats: int) -> tuple[float, float]:
    """Median seconds of ``train_step`` on ``batch`` after ``warmup`` steps, and the peak memory in MB: the GPU
    allocator's peak during the timed steps on CUDA, else the process's peak resident memory (which never goes
    down: measure one trainer per process)."""
    trainer.on_train_epoch_start()  # every network in training mode
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
    peak = (torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return statistics.median(times), peak / 2 ** 20


def measure_in_fresh_process(script: str | Path, argv: list[str]) -> dict:
    """Runs the benchmark ``script`` with ``argv`` in a new Python process and returns the JSON object on the last
    line it prints: a measurement whose peak resident memory is its own (a process's peak never goes down)."""
    done = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{Path(script).name} {' '.join(argv)} failed (exit {done.returncode}):\n"
                           f"{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
