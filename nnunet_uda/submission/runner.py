"""A submission folder run one case at a time, as the challenge runs it, each case measured.

:func:`run_submission` runs ``sh predict.sh CASE_INPUTS CASE_OUTPUTS`` once per case, each case alone in a temporary
inputs folder, and writes a CSV with one row per case: exit code, status, wall time, peak RAM of the predict.sh
process tree and, where ``nvidia-smi`` finds a GPU, peak GPU memory of the tree's processes, and the areas under
both memory curves over time in MB x s (FLARE24's ``AUC_RAM_Time`` and ``AUC_GPU_Time``), measured as
:mod:`nnunet_uda.submission.measure` describes.
"""
from __future__ import annotations

import csv
import glob
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nnunet_uda.submission.challenge import CHANNEL_SUFFIX, FILE_ENDING, SubmissionError
from nnunet_uda.submission.measure import Measurement, gpu_present, run_measured

DEFAULT_CSV = "efficiency.csv"
CSV_FIELDS = ("case", "status", "exit_code", "wall_time_s", "peak_ram_mb", "peak_gpu_mb", "auc_ram_time_mb_s",
              "auc_gpu_time_mb_s")


@dataclass(frozen=True)
class CaseResult:
    case: str
    status: str  # ok, failed (predict.sh exited non-zero) or no output (it wrote no <case>.nii.gz)
    measurement: Measurement
    log: Path

    def row(self) -> dict:
        m = self.measurement
        return {"case": self.case, "status": self.status, "exit_code": m.exit_code,
                "wall_time_s": f"{m.wall_time_s:.2f}", "peak_ram_mb": f"{m.peak_ram_mb:.0f}",
                "peak_gpu_mb": "" if m.peak_gpu_mb is None else f"{m.peak_gpu_mb:.0f}",
                "auc_ram_time_mb_s": f"{m.auc_ram_mb_s:.0f}",
                "auc_gpu_time_mb_s": "" if m.auc_gpu_mb_s is None else f"{m.auc_gpu_mb_s:.0f}"}


def find_cases(inputs: Path) -> dict[str, list[Path]]:
    """Each case of a challenge inputs folder (``<case>_0000.nii.gz``) with all its channel files."""
    if not inputs.is_dir():
        raise SubmissionError(f"the inputs folder {inputs} does not exist; check -i")
    suffix = CHANNEL_SUFFIX + FILE_ENDING
    cases = sorted(p.name[:-len(suffix)] for p in inputs.glob("*" + suffix))
    if not cases:
        raise SubmissionError(f"the inputs folder {inputs} has no <case>{suffix} images; check -i")
    return {case: sorted(inputs.glob(f"{glob.escape(case)}_[0-9][0-9][0-9][0-9]{FILE_ENDING}")) for case in cases}


def check_submission_folder(submission: Path) -> None:
    if not (submission / "predict.sh").is_file():
        raise SubmissionError(f"{submission} is not a submission folder (no predict.sh); build one with "
                              f"nnUNetv2_uda_submission, or check -s")


def run_case(submission: Path, case: str, images: Sequence[Path], outputs: Path, log: Path, interval: float,
             gpu: bool) -> CaseResult:
    """``sh predict.sh`` on one case alone in a temporary inputs folder; its label map is moved to ``outputs``."""
    with tempfile.TemporaryDirectory(prefix="nnunet_uda_case_") as scratch:
        case_inputs, case_outputs = Path(scratch, "inputs"), Path(scratch, "outputs")
        case_inputs.mkdir()
        case_outputs.mkdir()
        for image in images:
            os.symlink(image.resolve(), case_inputs / image.name)
        # this Python environment's commands (nnUNetv2_predict, python) come first, as in the image
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        measurement = run_measured(["sh", "predict.sh", str(case_inputs), str(case_outputs)], submission, log,
                                   interval, gpu, env)
        produced = case_outputs / f"{case}{FILE_ENDING}"
        if measurement.exit_code != 0:
            status = "failed"
        elif not produced.is_file():
            status = "no output"
        else:
            status = "ok"
            shutil.move(produced, outputs / produced.name)
    return CaseResult(case, status, measurement, log)


def write_csv(results: Sequence[CaseResult], path: Path) -> None:
    """The CSV of the cases run so far, replaced whole (a reader never sees a half-written file)."""
    tmp = path.with_name(f".{path.name}.incomplete-{os.getpid()}")
    with open(tmp, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(result.row() for result in results)
    os.replace(tmp, path)


def failure_message(result: CaseResult, lines: int = 15) -> str:
    """What went wrong with a case, with the end of its log."""
    m = result.measurement
    what = (f"predict.sh exited with code {m.exit_code}" if result.status == "failed"
            else f"predict.sh wrote no {result.case}{FILE_ENDING}")
    tail = result.log.read_text(errors="replace").splitlines()[-lines:]
    return (f"case {result.case}: {what} after {m.wall_time_s:.1f} s; end of its log {result.log}:\n"
            + "\n".join(f"    {line}" for line in tail))


@dataclass(frozen=True)
class RunReport:
    """The cases of a run, the CSV of their measurements and the folder of their logs."""

    results: list[CaseResult]
    csv: Path
    logs: Path

    @property
    def failed(self) -> list[str]:
        return [r.case for r in self.results if r.status != "ok"]


def run_submission(submission: str | os.PathLike, inputs: str | os.PathLike, outputs: str | os.PathLike,
                   csv_path: str | os.PathLike | None = None, interval: float = 0.1,
                   progress: bool = True) -> RunReport:
    """Run a submission folder on every case of ``inputs``, one case at a time, like the challenge.

    Label maps go to ``outputs/<case>.nii.gz``; each case's log to ``logs/<case>.log`` beside the CSV
    (default ``outputs/efficiency.csv``), which is rewritten after every case. A failing case is reported
    (with the end of its log) and the next one runs; the report says which failed.
    """
    from tqdm import tqdm

    submission, inputs, outputs = Path(submission), Path(inputs), Path(outputs)
    check_submission_folder(submission)
    cases = find_cases(inputs)
    if outputs.resolve() == inputs.resolve():
        raise SubmissionError(f"the outputs folder {outputs} is the inputs folder; choose another -o")
    csv_path = Path(csv_path) if csv_path else outputs / DEFAULT_CSV
    report = RunReport([], csv_path, csv_path.parent / "logs")
    outputs.mkdir(parents=True, exist_ok=True)
    report.logs.mkdir(parents=True, exist_ok=True)
    gpu = gpu_present()
    bar = tqdm(cases.items(), total=len(cases), unit="case", disable=not progress)
    for case, images in bar:
        bar.set_postfix_str(case)
        report.results.append(run_case(submission, case, images, outputs, report.logs / f"{case}.log", interval, gpu))
        write_csv(report.results, report.csv)
        if report.results[-1].status != "ok":
            tqdm.write(failure_message(report.results[-1]), file=sys.stderr)
    return report
