"""Running one function over many cases, in worker processes, with a progress bar."""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence, TypeVar

from tqdm import tqdm

R = TypeVar("R")


def map_cases(function: Callable[[tuple], R], jobs: Sequence[tuple], num_processes: int, desc: str) -> list[R]:
    """``function`` of every job, in job order. ``num_processes`` spawned workers (spawn: safe with
    torch and threads in the parent); 1, or a single job, runs in this process."""
    progress = dict(total=len(jobs), desc=desc, unit="case")
    if num_processes <= 1 or len(jobs) == 1:
        return [function(job) for job in tqdm(jobs, **progress)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(num_processes, len(jobs)), mp_context=context) as pool:
        return list(tqdm(pool.map(function, jobs), **progress))
