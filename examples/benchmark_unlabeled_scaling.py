"""Time and disk of nnU-Net's planning and preprocessing as unlabeled cases are added.

For each N of ``--n_unlabeled``: a labeled phantom dataset (``--n_labeled`` CT cases, its domain
table) in a fresh work folder, N unlabeled CT images added with ``nnUNetv2_uda_add_unlabeled``, then
``nnUNetv2_uda_plan_and_preprocess`` (verification, fingerprint, planning, preprocessing), run as a
subprocess with the nnUNet_* variables pointing at that folder (after one unmeasured warm-up run).
Printed per N: the planning time, seconds per case, the disk used by the preprocessed folder
(allocated blocks, as ``du``) and the disk of the unlabeled cases' preprocessed files per unlabeled
case; then a least-squares line
(fixed seconds + seconds per unlabeled case) and whether growth is at most linear (CPU seconds per
case and MB per unlabeled case do not grow with N, 15% tolerance). CPU time (user + system, the
planning command and its workers) is printed beside wall time because wall time on a shared machine
varies with other jobs.
``unlabeled_scaling.md`` and ``unlabeled_scaling.json`` in ``--work`` hold the figures.

    python examples/benchmark_unlabeled_scaling.py [--n_unlabeled 8 16 32] [--shape 32 32 32]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np

from nnunet_uda.data.raw import dataset_folder_name, load_dataset_json, save_json
from nnunet_uda.data.semi_supervised import link_or_copy
from nnunet_uda.pipeline import Runner, command, nnunet_environment
from nnunet_uda.synthetic.dataset import generate_phantom_dataset

POOL_ID, DATASET_ID, NAME, PREFIX = 990, 500, "LabeledPhantom", "unl_"
TOLERANCE = 1.15


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="benchmark_output/unlabeled_scaling")
    parser.add_argument("--n_unlabeled", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--n_labeled", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 32, 32])
    parser.add_argument("--processes", type=int, default=2, help="-np of the planning command")
    parser.add_argument("--no_warmup", action="store_true",
                        help="skip the unmeasured first run of the smallest N (it loads libraries into the page cache, "
                             "which would otherwise count against the first size)")
    return parser.parse_args(argv)


def cpu_seconds() -> float:
    """User + system CPU time of this process's finished children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def disk_bytes(paths) -> int:
    """Allocated bytes of the files (as du counts them)."""
    return sum(p.stat().st_blocks * 512 for p in paths if p.is_file())


def labeled_dataset(pool: Path, raw_root: Path, n_labeled: int) -> Path:
    """The pool's first ``n_labeled`` CT cases (images and labels linked) with their domain table."""
    pool_json = load_dataset_json(pool)
    cases = [f"ph_CT_{i:03d}" for i in range(n_labeled)]
    folder = raw_root / dataset_folder_name(DATASET_ID, NAME)
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    for case in cases:
        link_or_copy(pool / "imagesTr" / f"{case}_0000.nii.gz", folder / "imagesTr" / f"{case}_0000.nii.gz")
        link_or_copy(pool / "labelsTr" / f"{case}.nii.gz", folder / "labelsTr" / f"{case}.nii.gz")
    uda = pool_json["uda"]
    content = {**pool_json, "name": NAME, "numTraining": n_labeled,
               "uda": {"domains": {"CT": uda["domains"]["CT"]}, "target": ["CT"],
                       "cases": {c: {"domain": "CT", "labels": "ground_truth"} for c in cases}}}
    save_json(content, folder / "dataset.json")
    return folder


def measure(args, pool: Path, images: list[Path], n: int, work: Path) -> dict:
    root = work / f"n{n:03d}"
    shutil.rmtree(root, ignore_errors=True)
    raw = labeled_dataset(pool, root / "nnUNet_raw", args.n_labeled)
    inputs = root / "unlabeled_images"
    inputs.mkdir()
    for i, image in enumerate(images[:n]):
        link_or_copy(image, inputs / f"case{i:03d}.nii.gz")
    run = Runner(nnunet_environment(root, processes=args.processes), log=root / "log.txt")
    # the phantom's images are harmonised already, as the domain table says of its CT domain
    run("add", command("nnUNetv2_uda_add_unlabeled"), "-d", str(DATASET_ID), "-i", str(inputs), "--prefix", PREFIX,
        "--no_harmonize")
    start, cpu_start = time.perf_counter(), cpu_seconds()
    run("plan", command("nnUNetv2_uda_plan_and_preprocess"), "-d", str(DATASET_ID), "-bs", "2",
        "-np", str(args.processes), "-folds", "2")
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    preprocessed = root / "nnUNet_preprocessed" / raw.name
    files = [p for p in preprocessed.rglob("*") if p.is_file()]
    unlabeled_files = [p for p in files if p.name.startswith(PREFIX)]
    cases = args.n_labeled + n
    result = {"n_unlabeled": n, "cases": cases, "add_seconds": run.timings["add"], "plan_seconds": seconds,
              "seconds_per_case": seconds / cases, "cpu_seconds": cpu, "cpu_seconds_per_case": cpu / cases,
              "preprocessed_mb": disk_bytes(files) / 2 ** 20,
              "mb_per_unlabeled_case": disk_bytes(unlabeled_files) / 2 ** 20 / n if n else float("nan"),
              "raw_mb_per_unlabeled_case": disk_bytes([p for p in raw.rglob(f"{PREFIX}*")]) / 2 ** 20 / n
              if n else float("nan")}
    shutil.rmtree(root)
    return result


def linear_fit(rows: list[dict]) -> str:
    """Least-squares fixed + per-case * N over the rows, of wall and CPU time."""
    if len(rows) < 2:
        return "(one size: no fit)"
    n = [r["n_unlabeled"] for r in rows]
    fits = {key: np.polyfit(n, [r[key] for r in rows], 1) for key in ("plan_seconds", "cpu_seconds")}
    return ("least-squares fit: wall = {1:.1f} s + {0:.2f} s per unlabeled case; CPU = {3:.1f} s + {2:.2f} s per "
            "unlabeled case").format(*fits["plan_seconds"], *fits["cpu_seconds"])


def verdict(rows: list[dict]) -> str:
    first, last = rows[0], rows[-1]
    time_ratio = last["cpu_seconds_per_case"] / first["cpu_seconds_per_case"]
    disk = [r["mb_per_unlabeled_case"] for r in rows if r["n_unlabeled"]]
    disk_ratio = max(disk) / min(disk)
    linear = time_ratio <= TOLERANCE and disk_ratio <= TOLERANCE
    return (f"growth is {'at most linear' if linear else 'MORE than linear'}: CPU seconds per case at N="
            f"{last['n_unlabeled']} are {time_ratio:.2f} x those at N={first['n_unlabeled']}; MB per unlabeled case "
            f"vary by a factor {disk_ratio:.2f} (limit {TOLERANCE} for both)")


def main(argv=None) -> None:
    args = parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = sorted(set(args.n_unlabeled))
    pool = generate_phantom_dataset(POOL_ID, name="ScalingPool", shape=tuple(args.shape),
                                    n_source=args.n_labeled + max(sizes), n_target=1, n_test=1, fully_labeled=True,
                                    output_root=work / "pool", overwrite=True, progress=True)
    images = [pool / "imagesTr" / f"ph_CT_{i:03d}_0000.nii.gz"
              for i in range(args.n_labeled, args.n_labeled + max(sizes))]
    if not args.no_warmup:
        print(f"\n=== warm-up: {args.n_labeled} labeled + {sizes[0]} unlabeled cases (not measured) ===", flush=True)
        measure(args, pool, images, sizes[0], work)
    rows = []
    for n in sizes:
        print(f"\n=== {args.n_labeled} labeled + {n} unlabeled cases ===", flush=True)
        rows.append(measure(args, pool, images, n, work))
    header = (f"{'N':>4} {'cases':>5} {'add s':>6} {'plan s':>7} {'s/case':>7} {'CPU s':>6} {'CPU s/case':>10} "
              f"{'MB':>7} {'MB/unl. case':>12} {'raw MB/unl.':>11}")
    lines = [header] + [f"{r['n_unlabeled']:>4} {r['cases']:>5} {r['add_seconds']:>6.1f} {r['plan_seconds']:>7.1f} "
                        f"{r['seconds_per_case']:>7.2f} {r['cpu_seconds']:>6.1f} {r['cpu_seconds_per_case']:>10.2f} "
                        f"{r['preprocessed_mb']:>7.2f} "
                        f"{r['mb_per_unlabeled_case']:>12.3f} {r['raw_mb_per_unlabeled_case']:>11.3f}"
                        for r in rows]
    lines += [linear_fit(rows), verdict(rows)]
    lines.append(f"({args.n_labeled} labeled CT phantom cases at {'x'.join(map(str, args.shape))}, 3d_fullres, "
                 f"-np {args.processes}, {os.cpu_count()} CPUs; times include process start, verification and "
                 f"fingerprinting)")
    print("\n" + "\n".join(lines))
    (work / "unlabeled_scaling.md").write_text("```\n" + "\n".join(lines) + "\n```\n")
    (work / "unlabeled_scaling.json").write_text(json.dumps({"settings": vars(args), "rows": rows,
                                                             "table": lines}, indent=2))


if __name__ == "__main__":
    main()
