"""Running nnU-Net's and nnunet_uda's commands in sequence: the demo, the tests and benchmarks.

Every step is a real command line (``nnUNetv2_uda_phantom``, ``nnUNetv2_uda_plan_and_preprocess``,
``nnUNetv2_train``, ``nnUNetv2_predict``, ``nnUNetv2_uda_evaluate``), run as a subprocess with an
environment that points nnU-Net at one working folder, exactly as a user would type them.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from nnunet_uda.cli.trainer_path import trainer_path
from nnunet_uda.data.raw import dataset_folder_name, load_dataset_json
from nnunet_uda.domains import DomainTable
from nnunet_uda.evaluation.report import evaluate_folder
from nnunet_uda.planning import DEFAULT_PLANS


def nnunet_environment(work: Path, epochs: int | None = None, iterations: int | None = None,
                       val_iterations: int | None = None, processes: int = 2) -> dict[str, str]:
    """The environment for nnU-Net commands working in ``work`` (raw, preprocessed, results)."""
    work = Path(work).resolve()
    env = dict(os.environ)
    env.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(work / "nnUNet_results"), nnUNet_extTrainer=trainer_path(),
               nnUNet_n_proc_DA=str(processes), nnUNet_def_n_proc=str(processes), nnUNet_compile="false")
    for name, value in (("nnUNet_uda_epochs", epochs), ("nnUNet_uda_iterations", iterations),
                        ("nnUNet_uda_val_iterations", val_iterations)):
        if value is not None:
            env[name] = str(value)
    return env


def add_run_arguments(parser, epochs: int, iterations: int, phantom_cases: bool = True) -> None:
    """The brief-run options of the examples (and the phantom's case counts)."""
    if phantom_cases:
        parser.add_argument("--n_source", type=int, default=16, help="CT training cases")
        parser.add_argument("--n_target", type=int, default=16, help="training cases per target domain")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--iterations", type=int, default=iterations, help="training iterations per epoch")
    parser.add_argument("--val_iterations", type=int, default=2)


@dataclass
class Runner:
    """Runs command lines in one environment, echoing them and timing each step."""
    env: dict[str, str]
    log: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def __call__(self, step: str, *command: str, extra_env: dict[str, str] | None = None) -> None:
        print(f"\n$ {shlex.join(command)}", flush=True)
        start = time.time()
        env = {**self.env, **(extra_env or {})}
        if self.log is None:
            result = subprocess.run(command, env=env)
        else:
            with open(self.log, "a") as log:
                log.write(f"\n$ {shlex.join(command)}\n")
                log.flush()
                result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.timings[step] = self.timings.get(step, 0.0) + time.time() - start
        if result.returncode != 0:
            where = f"; see {self.log}" if self.log else ""
            raise RuntimeError(f"step '{step}' failed with exit code {result.returncode}{where}")


def work_runner(args) -> tuple[Path, Runner]:
    """The benchmark's work folder ``args.work`` (created) and a :class:`Runner` of nnU-Net commands in it, with the
    brief-run options of :func:`add_run_arguments` and its log in ``commands.log``."""
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = nnunet_environment(work, args.epochs, args.iterations, args.val_iterations)
    return work, Runner(env, log=work / "commands.log")


def command(name: str) -> str:
    """The console script ``name`` of this Python environment."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def split_test_set_by_domain(raw_folder: Path, destination: Path) -> dict[str, Path]:
    """Link the images of ``imagesTs`` into one folder per domain (the domain table says which)."""
    dataset_json = load_dataset_json(raw_folder)
    table = DomainTable.from_dataset_json(dataset_json, where=str(Path(raw_folder) / "dataset.json"))
    folders: dict[str, Path] = {}
    for path in sorted((Path(raw_folder) / "imagesTs").glob("*" + dataset_json["file_ending"])):
        case = path.name[: -len(dataset_json["file_ending"]) - len("_0000")]
        folder = folders.setdefault(table.domain_of(case), Path(destination) / table.domain_of(case))
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / path.name
        if not target.exists():
            os.symlink(path.resolve(), target)
    return folders


def predict_test_sets(run: Runner, raw_folder: Path, dataset_id: int, trainer: str, output: Path, work: Path,
                      folds: Sequence[int | str] = (0,), plans: str = DEFAULT_PLANS,
                      configuration: str = "3d_fullres", domains: Sequence[str] | None = None) -> Path:
    """``nnUNetv2_predict`` of the test set (or of the cases of ``domains``) by the ensemble of ``folds``: once
    per domain, each with its domain's normalisation, for a trainer with per-domain norms; in one call
    otherwise. Returns ``output / "all"``, where the predictions of all domains are gathered."""
    inputs = Path(work) / f"test_inputs_{dataset_id}"
    shutil.rmtree(inputs, ignore_errors=True)
    output, merged = Path(output), Path(output) / "all"
    folders = {d: f for d, f in split_test_set_by_domain(raw_folder, inputs).items() if domains is None or d in domains}
    if folders and not per_domain_norms(trainer):
        (inputs / "all").mkdir()
        for image in (image for folder in folders.values() for image in folder.iterdir()):
            os.symlink(image.resolve(), inputs / "all" / image.name)
        folders = {"all": inputs / "all"}
    for domain, folder in folders.items():
        run("predict", command("nnUNetv2_predict"), "-i", str(folder), "-o", str(output / domain),
            "-d", str(dataset_id), "-c", configuration, "-f", *map(str, folds), "-tr", trainer, "-p", plans,
            "-device", "cpu", "--disable_progress_bar", extra_env={"nnUNet_uda_inference_domain": domain}
            if domain != "all" else None)
    merged.mkdir(parents=True, exist_ok=True)
    for domain_folder in output.iterdir():
        if domain_folder != merged:
            for prediction in domain_folder.glob("*.nii.gz"):
                shutil.copy(prediction, merged / prediction.name)
    return merged


def per_domain_norms(trainer: str) -> bool:
    """Whether the plugin trainer ``trainer`` builds a network with per-domain norms (unknown names: assumed)."""
    from nnunet_uda.training import TRAINERS

    return getattr(TRAINERS.get(trainer), "use_conditional_norm", True)


@dataclass
class PhantomSettings:
    """The phantom dataset an experiment runs on (see ``nnUNetv2_uda_phantom``)."""
    shape: tuple[int, int, int] = (24, 24, 24)
    n_source: int = 16
    n_target: int = 16
    n_test: int = 5
    flags: tuple[str, ...] = ()

    def arguments(self) -> list[str]:
        return ["--shape", *map(str, self.shape), "--n_source", str(self.n_source), "--n_target",
                str(self.n_target), "--n_test", str(self.n_test), *self.flags]


def prepare_phantom(run: Runner, dataset_id: int, phantom: PhantomSettings, folds: int = 5,
                    batch_size: int = 2, configurations: Sequence[str] = ("3d_fullres",)) -> Path:
    """``nnUNetv2_uda_phantom`` and ``nnUNetv2_uda_plan_and_preprocess`` (of ``configurations``); returns the
    raw folder."""
    d = str(dataset_id)
    run("phantom", command("nnUNetv2_uda_phantom"), "-d", d, *phantom.arguments(), "--overwrite")
    run("plan and preprocess", command("nnUNetv2_uda_plan_and_preprocess"), "-d", d, "-bs", str(batch_size),
        "-folds", str(folds), "-c", *configurations)
    return Path(run.env["nnUNet_raw"]) / dataset_folder_name(dataset_id, "UDAPhantom")


def train_and_evaluate(run: Runner, work: Path, raw: Path, dataset_id: int, trainer: str,
                       folds: Sequence[int] = (0,), domains: Sequence[str] | None = None) -> dict:
    """``nnUNetv2_train`` of each fold, prediction of every domain's test set (or of ``domains``) by their
    ensemble (into :func:`predictions_folder`) and evaluation, each through its command line; returns the
    evaluation summary. A finished training (``checkpoint_final.pth``) is not repeated, an interrupted one
    resumes (``--c``), and an evaluation newer than every fold's checkpoint is reused, so an interrupted
    benchmark resumes."""
    tag = run_tag(dataset_id, trainer, folds)
    predictions = predictions_folder(work, dataset_id, trainer, folds)
    summary = Path(work) / f"evaluation_{tag}" / "summary.json"
    finals = [final_checkpoint(run, raw, trainer, f) for f in folds]
    if all(f.is_file() for f in finals) and summary.is_file() and \
            summary.stat().st_mtime > max(f.stat().st_mtime for f in finals):
        return json.loads(summary.read_text())
    train_folds(run, raw, dataset_id, trainer, folds)
    merged = predict_test_sets(run, raw, dataset_id, trainer, predictions, work, folds, domains=domains)
    reference = raw / "labelsTs"
    if domains is not None:  # score the predicted domains only
        reference = Path(work) / f"references_{tag}"
        shutil.rmtree(reference, ignore_errors=True)
        reference.mkdir(parents=True)
        for prediction in merged.glob("*.nii.gz"):
            os.symlink((raw / "labelsTs" / prediction.name).resolve(), reference / prediction.name)
    run("evaluate", command("nnUNetv2_uda_evaluate"), "-ref", str(reference),
        "-pred", str(merged), "-d", str(dataset_id), "-o", str(summary.parent))
    return json.loads(summary.read_text())


def initial_label_quality(raw: Path) -> dict:
    """The training label files (manual and initial pseudo labels) scored against the phantom's true labels
    (``labelsTr_reference``): the evaluation's ``mean`` per domain."""
    with warnings.catch_warnings():  # the hand-labeled cases have no reference, by design
        warnings.filterwarnings("ignore", message=".*have no reference.*")
        return evaluate_folder(raw / "labelsTr_reference", raw / "labelsTr", load_dataset_json(raw),
                               num_processes=1)["mean"]


def predictions_folder(work: Path, dataset_id: int, trainer: str, folds: Sequence[int] = (0,)) -> Path:
    """Where :func:`train_and_evaluate` puts a model's test predictions (one folder per domain, and ``all``)."""
    return Path(work) / f"predictions_{run_tag(dataset_id, trainer, folds)}"


def run_tag(dataset_id: int, trainer: str, folds: Sequence[int]) -> str:
    """The name of one model's predictions, references and evaluation folders."""
    return f"{dataset_id}_{trainer}" + ("" if list(folds) == [0] else "_folds" + "".join(map(str, folds)))


def final_checkpoint(run: Runner, raw: Path, trainer: str, fold: int | str) -> Path:
    """Where ``nnUNetv2_train`` leaves a fold's final weights (plans and configuration of the plugin)."""
    return (Path(run.env["nnUNet_results"]) / Path(raw).name / f"{trainer}__{DEFAULT_PLANS}__3d_fullres"
            / f"fold_{fold}" / "checkpoint_final.pth")


def train_folds(run: Runner, raw: Path, dataset_id: int, trainer: str, folds: Sequence[int]) -> None:
    """``nnUNetv2_train`` of every fold not finished yet; an interrupted one resumes (``--c``)."""
    for fold in folds:
        final = final_checkpoint(run, raw, trainer, fold)
        if not final.is_file():
            resume = ("--c",) if (final.parent / "checkpoint_latest.pth").is_file() else ()
            run("train", command("nnUNetv2_train"), str(dataset_id), "3d_fullres", str(fold), "-tr", trainer,
                "-p", DEFAULT_PLANS, "-device", "cpu", *resume)


def self_training_round(run: Runner, work: Path, dataset_id: int, trainer: str, folds: Sequence[int], new_id: int,
                        top: int, absent_agreement: float = 1.0) -> Path:
    """The data of a pseudo-label round: ``nnUNetv2_uda_pseudolabel`` from the ``folds`` of ``trainer``
    on ``dataset_id`` into dataset ``new_id`` (replaced if there), then planned with as many folds;
    returns its raw folder. The command keeps its fold predictions in ``work`` and reuses them, so a
    repeated round only selects and writes again."""
    run("pseudo-label", command("nnUNetv2_uda_pseudolabel"), "-d", str(dataset_id), "-o", str(new_id),
        "-tr", trainer, "-p", DEFAULT_PLANS, "-f", *map(str, folds), "--top", str(top), "-work", str(work),
        "--absent_agreement", str(absent_agreement), "-device", "cpu", "--overwrite")
    run("plan and preprocess", command("nnUNetv2_uda_plan_and_preprocess"), "-d", str(new_id), "-bs", "2",
        "-folds", str(len(folds)))
    return next(Path(run.env["nnUNet_raw"]).glob(f"Dataset{new_id:03d}_*"))


def phantom_experiment(run: Runner, work: Path, dataset_id: int, trainer: str, phantom: PhantomSettings,
                       folds: int = 5, batch_size: int = 2) -> dict:
    """A phantom dataset, then one trainer trained and evaluated on it (see the two steps)."""
    raw = prepare_phantom(run, dataset_id, phantom, folds, batch_size)
    return train_and_evaluate(run, work, raw, dataset_id, trainer)
