"""The wall time and memory of a process tree, sampled as the FLARE challenges sample a submission's.

:func:`run_measured` runs a command and measures its process tree: exit code, wall time, peak RAM and, where
``nvidia-smi`` finds a GPU, peak GPU memory of the tree's processes, and the areas under both memory curves over
time in MB x s (FLARE24's ``AUC_RAM_Time`` and ``AUC_GPU_Time``, from samples every 0.1 s as its ``Efficiency.py``
takes them; FLARE samples the whole machine's used RAM and the GPU's used memory, this module the command's own
processes). Memory is in MB of 2^20 bytes (nvidia-smi's unit). RAM is polled from ``/proc``: the tree's
proportional set sizes, which count pages shared among its processes (nnUNetv2_predict forks 12 workers to list its
input files) once in all, not once each (:func:`process_memory`). The kernel's high-water mark of the largest
single process (``wait4``) catches a peak between two samples and counts libraries in full that other processes on
the machine share; the larger of the two is reported.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

MB = 2 ** 20


def process_parents() -> dict[int, int]:
    """Every process's parent, from ``/proc`` (empty where there is none)."""
    parents = {}
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):  # the process may end while it is read
                    parents[int(entry.name)] = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
    return parents


def process_memory(pid: int) -> int:
    """A process's proportional set size in bytes: its own memory plus its share of pages it shares.

    Forked workers share their parent's pages until they write them; their resident sizes would count those
    pages once per process, their PSS add up to the memory they occupy together. Where the kernel gives no
    PSS (``/proc/PID/smaps_rollup``, Linux >= 4.14), the resident size; 0 once the process has ended.
    """
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(OSError):
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return 0


def tree_pids(parents: Mapping[int, int], root: int) -> set[int]:
    """``root`` and its descendants, given each process's parent."""
    children = defaultdict(list)
    for pid, parent in parents.items():
        children[parent].append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children[pid])
    return tree


def gpu_present() -> bool:
    """Whether ``nvidia-smi`` is installed and lists a GPU."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def gpu_memory_by_pid() -> dict[int, int]:
    """GPU memory in MB of each process using a GPU, summed over GPUs (``nvidia-smi --query-compute-apps``)."""
    try:
        result = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return parse_compute_apps(result.stdout)


def parse_compute_apps(text: str) -> dict[int, int]:
    """``pid, used_memory`` lines of nvidia-smi; lines without numbers (``[N/A]``) are skipped."""
    used: dict[int, int] = defaultdict(int)
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            used[int(fields[0])] += int(fields[1])
    return dict(used)


class Sample(NamedTuple):
    time: float  # seconds since the epoch (``time.time()``, comparable with file times)
    ram_bytes: int
    gpu_mb: int


class TreeMonitor:
    """Samples the memory (and GPU memory) of a process tree every ``interval`` seconds, on a fixed schedule, in a
    background thread while in a ``with``; ``samples`` holds every :class:`Sample`, ``end`` when the ``with`` ended."""

    def __init__(self, root: int, interval: float, gpu: bool = False):
        self.root, self.interval, self.gpu = root, interval, gpu
        self.samples: list[Sample] = []
        self.end = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.end = time.time()

    def _poll(self) -> None:
        due = time.perf_counter()
        while True:
            self.sample()
            due += self.interval
            if self._stop.wait(max(due - time.perf_counter(), 0.0)):
                return

    def sample(self) -> None:
        now = time.time()
        tree = tree_pids(process_parents(), self.root)
        ram = sum(process_memory(pid) for pid in tree)
        gpu = sum(mb for pid, mb in gpu_memory_by_pid().items() if pid in tree) if self.gpu else 0
        self.samples.append(Sample(now, ram, gpu))

    def peak(self, field: str) -> float:
        """The largest value of a :class:`Sample` field."""
        return max((getattr(sample, field) for sample in self.samples), default=0)

    def area(self, field: str) -> float:
        """The area under a :class:`Sample` field's curve up to the end of the ``with``: :func:`area_under_curve`."""
        return area_under_curve([s.time for s in self.samples], [getattr(s, field) for s in self.samples], self.end)


def area_under_curve(times: Sequence[float], values: Sequence[float], end: float) -> float:
    """The integral of a sampled curve over time, each sample held until the next one and the last until ``end``.

    With samples every ``interval`` seconds this is FLARE24's ``sum(samples) * interval`` (``load_json.py``'s
    AUC_GPU_Time and AUC_RAM_Time); a sample that comes late is weighted by the time it stood for.
    """
    return float(sum(value * (following - current)
                     for value, current, following in zip(values, times, [*times[1:], end])))


@dataclass(frozen=True)
class Measurement:
    exit_code: int
    wall_time_s: float
    peak_ram_mb: float
    peak_gpu_mb: float | None
    auc_ram_mb_s: float  # FLARE's AUC_RAM_Time of the process tree
    auc_gpu_mb_s: float | None  # FLARE's AUC_GPU_Time of the process tree


def run_measured(command: Sequence[str], cwd: Path, log: Path, interval: float = 0.1, gpu: bool = False,
                 env: Mapping[str, str] | None = None) -> Measurement:
    """Run ``command`` (its output into ``log``) and measure its process tree (module docstring)."""
    with open(log, "w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            with TreeMonitor(process.pid, interval, gpu) as monitor:
                _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            raise
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    largest_process = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB on Linux
    return Measurement(process.returncode, wall, max(monitor.peak("ram_bytes"), largest_process) / MB,
                       float(monitor.peak("gpu_mb")) if gpu else None, monitor.area("ram_bytes") / MB,
                       monitor.area("gpu_mb") if gpu else None)
