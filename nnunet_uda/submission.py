"""Challenge submissions: a folder that segments ``/workspace/inputs`` with a trained nnU-Net model, and a local
runner that executes it one case at a time, as the FLARE challenges do, measuring each case.

The FLARE challenges (paper 002, sections 3.1 and 4) run a team's Docker image once per test case with the case's
image ``<case>_0000.nii.gz`` mounted in ``/workspace/inputs`` and expect ``<case>.nii.gz`` in ``/workspace/outputs``;
they score the running time (60 s tolerance) and the GPU memory. The run command is::

    docker container run --gpus "device=0" -m 28G --name TEAM --rm -v $PWD/inputs/:/workspace/inputs/ \\
        -v $PWD/outputs/:/workspace/outputs/ TEAM:latest /bin/bash -c "sh predict.sh"

:func:`build_submission` writes the folder, whole or not at all:

- ``model/``: nnU-Net's own export of the trained model (``export_pretrained_model``, the zip of
  ``nnUNetv2_export_model_to_zip``, unpacked): an ``nnUNet_results`` tree with the plans, the dataset.json and the
  chosen checkpoint of each fold;
- ``plugin/``: the packages ``nnunet_uda`` and ``nnunet_uda_trainers`` as installed when the folder was built. The
  plugin is not on a package registry, so it travels as code: ``predict.sh`` puts ``plugin/`` on ``PYTHONPATH`` and
  points ``nnUNet_extTrainer`` at ``plugin/nnunet_uda_trainers``, where nnU-Net finds the model's trainer class;
- ``requirements.txt``: the plugin's pip requirements (``nnunetv2==2.8.1`` among them), installed by the Dockerfile;
- ``predict.sh``: nnU-Net's prediction of every ``*_0000.nii.gz`` of the inputs folder, then the post-processing if
  configured, then ``<case>.nii.gz`` into the outputs folder. POSIX sh, since the challenge starts it with ``sh``;
- ``postprocessing.json`` (with post-processing only): the rules of :mod:`nnunet_uda.postprocessing`, by label value;
- ``Dockerfile``: a PyTorch CUDA runtime image with the requirements and this folder in ``/workspace``; its ``CMD``
  (not an ``ENTRYPOINT``, which would turn the challenge's command into arguments of predict.sh) is
  ``sh predict.sh``;
- ``README.md``: what the folder holds and how to run it.

Conditional-norm models (the plugin's domain-adaptation trainers) segment with the norms of one domain: the one
stored with the weights unless another is chosen; ``predict.sh`` exports it as ``nnUNet_uda_inference_domain``, so
the submission does not depend on the environment it runs in.

:func:`run_submission` runs ``sh predict.sh CASE_INPUTS CASE_OUTPUTS`` once per case, each case alone in a temporary
inputs folder, and writes a CSV with one row per case: exit code, status, wall time, peak RAM of the predict.sh
process tree and, where ``nvidia-smi`` finds a GPU, peak GPU memory of the tree's processes, and the areas under
both memory curves over time in MB x s (FLARE24's ``AUC_RAM_Time`` and ``AUC_GPU_Time``, from samples every 0.1 s
as its ``Efficiency.py`` takes them; FLARE samples the whole machine's used RAM and the GPU's used memory, this
runner the submission's own processes). Memory is in MB of 2^20 bytes (nvidia-smi's unit). RAM is polled from ``/proc``: the tree's proportional set sizes, which count pages
shared among its processes (nnUNetv2_predict forks 12 workers to list its input files) once in all, not once each
(:func:`process_memory`). The kernel's high-water mark of the largest single process (``wait4``) catches a peak
between two samples and counts libraries in full that other processes on the machine share; the larger of the two
is reported.
"""
from __future__ import annotations

import contextlib
import csv
import glob
import importlib.metadata
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from nnunet_uda.data.raw import atomic_folder
from nnunet_uda.postprocessing import CONFIG_FILE, PostprocessingConfig, PostprocessingError, named_config

FILE_ENDING = ".nii.gz"
CHANNEL_SUFFIX = "_0000"
DEFAULT_FOLDS = ("0", "1", "2", "3", "4")
DEFAULT_CHECKPOINT = "checkpoint_final.pth"
# The FLARE 2024 paper's environment (Table 2: PyTorch 2.4.0, CUDA 12.1); its torch satisfies nnunetv2 2.8.1.
DOCKER_BASE_IMAGE = "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime"
DEFAULT_CSV = "efficiency.csv"
CSV_FIELDS = ("case", "status", "exit_code", "wall_time_s", "peak_ram_mb", "peak_gpu_mb", "auc_ram_time_mb_s",
              "auc_gpu_time_mb_s")
MB = 2 ** 20


class SubmissionError(RuntimeError):
    """A submission cannot be built or run; the message names the file or case and the fix."""


# ----------------------------------------------------------------------------------------------------------------
# the trained model


@dataclass(frozen=True)
class ModelSpec:
    """A trained nnU-Net model as nnU-Net's commands name it."""

    dataset: str  # the dataset's folder name, e.g. Dataset500_FLARE
    configuration: str
    trainer: str
    plans: str
    folds: tuple[str, ...]
    checkpoint: str

    @property
    def identifier(self) -> str:
        """nnU-Net's name of the model folder, ``trainer__plans__configuration``."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    def train_command(self, fold: str = "FOLD", *flags: str) -> str:
        dataset_id = str(int(self.dataset[len("Dataset"):].split("_", 1)[0]))
        return shlex.join(["nnUNetv2_train", dataset_id, self.configuration, fold, "-tr", self.trainer,
                           "-p", self.plans, *flags])


def resolve_dataset(dataset: str | int) -> str:
    """nnU-Net's dataset folder name for an id or name (looked up in nnUNet_raw, _preprocessed and _results)."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(str(dataset))
    except (RuntimeError, ValueError) as error:
        raise SubmissionError(f"dataset {dataset!r}: {error}") from None


def model_folder(spec: ModelSpec) -> Path:
    """The model's folder in ``nnUNet_results`` (``<dataset>/<trainer>__<plans>__<configuration>``)."""
    results = os.environ.get("nnUNet_results")
    if not results:
        raise SubmissionError("nnUNet_results is not set; export it as for nnUNetv2_train (the folder that holds "
                              f"{spec.dataset}/{spec.identifier})")
    return Path(results) / spec.dataset / spec.identifier


def check_trained_model(spec: ModelSpec) -> Path:
    """The model folder, after checking everything nnU-Net's export and predictor read from it."""
    folder = model_folder(spec)
    if not folder.is_dir():
        raise SubmissionError(f"no trained model in {folder}; train it ({spec.train_command()}) or check -d, -c, -tr, "
                              f"-p and nnUNet_results")
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        if not (folder / name).is_file():
            raise SubmissionError(f"{folder / name} is missing; nnUNetv2_train writes it when training starts: "
                                  f"train the model again ({spec.train_command()})")
    trained = sorted(p.name[len("fold_"):] for p in folder.glob("fold_*") if p.is_dir())
    for fold in spec.folds:
        _check_fold(spec, folder / f"fold_{fold}", fold, trained)
    return folder


def _check_fold(spec: ModelSpec, fold_folder: Path, fold: str, trained: Sequence[str]) -> None:
    if not fold_folder.is_dir():
        raise SubmissionError(f"fold {fold} of the model is not trained ({fold_folder} does not exist); trained folds: "
                              f"{' '.join(trained) or 'none'}; pass -f with those, or train it "
                              f"({spec.train_command(fold)})")
    checkpoint = fold_folder / spec.checkpoint
    if not checkpoint.is_file():
        present = sorted(p.name for p in fold_folder.glob("checkpoint_*.pth"))
        raise SubmissionError(f"{checkpoint} does not exist; finish the training ({spec.train_command(fold, '--c')}) "
                              f"or choose another checkpoint with -chk (present: {', '.join(present) or 'none'})")
    for name in ("progress.png", "validation/summary.json"):
        if not (fold_folder / name).is_file():
            raise SubmissionError(f"{fold_folder / name} is missing; nnU-Net's model export needs the fold's final "
                                  f"validation: run it ({spec.train_command(fold, '--val')})")


def check_challenge_format(dataset_json: Mapping, where: str) -> None:
    """The challenge gives one image per case, ``<case>_0000.nii.gz``: the model must read exactly that."""
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    if len(channels) != 1:
        raise SubmissionError(f"{where}: the model reads {len(channels)} channels, but a challenge case is one image "
                              f"(<case>{CHANNEL_SUFFIX}{FILE_ENDING}); train a single-channel model")
    if dataset_json.get("file_ending") != FILE_ENDING:
        raise SubmissionError(f"{where}: the model's file_ending is {dataset_json.get('file_ending')!r}, but the "
                              f"challenge's images are {FILE_ENDING}; train on a {FILE_ENDING} dataset")


def stored_inference_domains(folder: Path, spec: ModelSpec, domains: Sequence[str]) -> dict[str, str] | None:
    """Each fold's inference domain stored with its weights (an index into the plans' ``domains``); ``None`` for
    networks without conditional norms."""
    import torch

    stored: dict[str, str] = {}
    for fold in spec.folds:
        checkpoint = torch.load(folder / f"fold_{fold}" / spec.checkpoint, map_location="cpu", weights_only=False)
        index = checkpoint["network_weights"].get("inference_domain")
        if index is None:
            return None
        if not domains or not 0 <= int(index) < len(domains):
            raise SubmissionError(f"{folder / 'plans.json'} does not list the domains of the conditional-norm network "
                                  f"(plans[\"uda\"][\"domains\"]); plan with nnUNetv2_uda_plan_and_preprocess")
        stored[fold] = domains[int(index)]
    return stored


def inference_domain(folder: Path, spec: ModelSpec, requested: str | None) -> str | None:
    """The domain whose norms segment the challenge images: ``requested`` or the one stored with the weights.

    ``None`` for nnU-Net's own networks, which have no domains (``requested`` is then an error).
    """
    domains = json.loads((folder / "plans.json").read_text()).get("uda", {}).get("domains")
    stored = stored_inference_domains(folder, spec, domains)
    if stored is None:
        if requested is not None:
            raise SubmissionError(f"-domain {requested}: the {spec.trainer} network has no conditional norms, so it "
                                  f"has no inference domain; leave -domain out")
        return None
    if requested is not None:
        if requested not in domains:
            raise SubmissionError(f"-domain {requested} is not a domain of the model; its domains: "
                                  f"{', '.join(domains)}")
        return requested
    if len(set(stored.values())) > 1:
        found = ", ".join(f"fold {f}: {d}" for f, d in stored.items())
        raise SubmissionError(f"the folds store different inference domains ({found}); choose one with -domain")
    return next(iter(stored.values()))


def postprocessing_config(spec: str | None, dataset_json: Mapping) -> PostprocessingConfig | None:
    """The post-processing of ``-postprocess``: a preset name (``flare``), a configuration file, or none."""
    if spec is None:
        return None
    try:
        return named_config(spec, dataset_json)
    except (FileNotFoundError, PostprocessingError) as error:
        raise SubmissionError(f"-postprocess: {error}") from None


# ----------------------------------------------------------------------------------------------------------------
# building the folder


@dataclass(frozen=True)
class SubmissionSettings:
    """How the submission predicts, besides the model."""

    domain: str | None = None
    postprocessing: PostprocessingConfig | None = None
    disable_tta: bool = False


def build_submission(spec: ModelSpec, output: str | os.PathLike, domain: str | None = None,
                     postprocess: str | None = None, disable_tta: bool = False, overwrite: bool = False) -> Path:
    """Write the submission folder of a trained model to ``output`` (contents in the module docstring).

    ``domain`` chooses the inference domain of a conditional-norm model (default: the one stored with its
    weights); ``postprocess`` is a preset name or a configuration file of :mod:`nnunet_uda.postprocessing`;
    ``disable_tta`` turns off nnU-Net's mirroring at prediction (in 3D, one network evaluation per window instead
    of up to eight). The folder is built
    beside ``output`` and moved into place when complete; an existing, non-empty ``output`` is an error unless
    ``overwrite``. Everything is checked before anything is written.
    """
    output = Path(output)
    folder = check_trained_model(spec)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    check_challenge_format(dataset_json, str(folder / "dataset.json"))
    settings = SubmissionSettings(inference_domain(folder, spec, domain),
                                  postprocessing_config(postprocess, dataset_json), disable_tta)
    requirements = requirements_txt()
    _check_output(output, overwrite)
    with atomic_folder(output, overwrite=True) as tmp:
        export_model(spec, tmp / "model")
        copy_plugin(tmp / "plugin")
        (tmp / "requirements.txt").write_text(requirements)
        write_predict_script(tmp / "predict.sh", spec, settings)
        if settings.postprocessing is not None:
            (tmp / CONFIG_FILE).write_text(json.dumps(settings.postprocessing.to_json(), indent=2) + "\n")
        (tmp / "Dockerfile").write_text(dockerfile(spec))
        (tmp / "README.md").write_text(readme(spec, settings, output.name))
    return output


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise SubmissionError(f"the output {output} exists and is not a folder: choose another -o")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise SubmissionError(f"the output folder {output} exists and is not empty: remove it, choose another -o, or "
                              f"pass --overwrite to replace it")


def export_model(spec: ModelSpec, destination: Path) -> None:
    """nnU-Net's export of the model (the zip of ``nnUNetv2_export_model_to_zip``), unpacked into ``destination``."""
    from nnunetv2.model_sharing.model_export import export_pretrained_model

    archive = destination.with_suffix(".zip")
    folds = tuple(f if f == "all" else int(f) for f in spec.folds)
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints each step
        export_pretrained_model(spec.dataset, str(archive), configurations=(spec.configuration,),
                                trainer=spec.trainer, plans_identifier=spec.plans, folds=folds,
                                save_checkpoints=(spec.checkpoint,))
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(destination)
    archive.unlink()


def copy_plugin(destination: Path) -> None:
    """The installed ``nnunet_uda`` and ``nnunet_uda_trainers`` packages, without bytecode."""
    import nnunet_uda
    from nnunet_uda.cli.trainer_path import trainer_path

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(Path(nnunet_uda.__file__).parent, destination / "nnunet_uda", ignore=ignore)
    shutil.copytree(trainer_path(), destination / "nnunet_uda_trainers", ignore=ignore)


def requirements_txt() -> str:
    """The installed plugin's pip requirements, without those under a marker (the extras, e.g. tests)."""
    try:
        requirements = importlib.metadata.requires("nnunet_uda") or []
    except importlib.metadata.PackageNotFoundError:
        raise SubmissionError("nnunet_uda is not installed as a package, so its requirements are unknown; install it "
                              "(pip install -e . in the source folder)") from None
    kept = [r for r in requirements if ";" not in r]
    version = importlib.metadata.version("nnunet_uda")
    return f"# pip requirements of nnunet_uda {version}, whose code is in plugin/\n" + "\n".join(kept) + "\n"


PREDICT_SH = """#!/bin/sh
# Challenge inference with the nnU-Net model @MODEL@ (folds @FOLDS@, @CHECKPOINT@),
# written by nnUNetv2_uda_submission. POSIX sh: the challenge's `sh predict.sh` and `bash predict.sh` both work.
#
# usage: sh predict.sh [INPUTS [OUTPUTS]]
#   INPUTS    folder of <case>_0000.nii.gz images (default: $SUBMISSION_INPUTS, else /workspace/inputs)
#   OUTPUTS   folder for the <case>.nii.gz label maps (default: $SUBMISSION_OUTPUTS, else /workspace/outputs)
#   SUBMISSION_DEVICE=cuda|cpu|mps   (default: cuda where torch finds a GPU, else cpu)
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
INPUTS=${1:-${SUBMISSION_INPUTS:-/workspace/inputs}}
OUTPUTS=${2:-${SUBMISSION_OUTPUTS:-/workspace/outputs}}

# the exported model, and the plugin's code that holds its trainer class, travel in this folder
export nnUNet_results="$HERE/model"
export nnUNet_extTrainer="$HERE/plugin/nnunet_uda_trainers"
export PYTHONPATH="$HERE/plugin${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1  # runs leave this folder as it was built (the image compiles the plugin once)
@DOMAIN@
DEVICE=${SUBMISSION_DEVICE:-$(python -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}

set -- "$INPUTS"/*@CHANNEL@@ENDING@
if [ ! -e "$1" ]; then
    echo "predict.sh: no <case>@CHANNEL@@ENDING@ images in $INPUTS" >&2
    exit 1
fi
mkdir -p "$OUTPUTS"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
trap 'exit 1' HUP INT TERM

# one process, no worker processes (-npp 0 -nps 0): the challenge gives one case at a time
nnUNetv2_predict -i "$INPUTS" -o "$SCRATCH/predictions" @PREDICT_ARGUMENTS@ -device "$DEVICE" \\
    -npp 0 -nps 0 --disable_progress_bar
@POSTPROCESS@
cp "$SCRATCH"/@RESULT@/*@ENDING@ "$OUTPUTS"/
"""


def predict_script(spec: ModelSpec, settings: SubmissionSettings) -> str:
    """The text of ``predict.sh`` (see :data:`PREDICT_SH`)."""
    arguments = ["-d", spec.dataset, "-c", spec.configuration, "-tr", spec.trainer, "-p", spec.plans,
                 "-f", *spec.folds, "-chk", spec.checkpoint] + (["--disable_tta"] if settings.disable_tta else [])
    if settings.domain is None:
        domain = "# nnU-Net's own network: no conditional norms, no inference domain"
    else:
        domain = (f"# the conditional norms of this domain segment every image\n"
                  f"export nnUNet_uda_inference_domain={shlex.quote(settings.domain)}")
    if settings.postprocessing is None:
        postprocess, result = "# no post-processing", "predictions"
    else:
        postprocess = (f"python -m nnunet_uda.cli.postprocess -i \"$SCRATCH/predictions\" -o \"$SCRATCH/postprocessed\" "
                       f"-config \"$HERE/{CONFIG_FILE}\" -np 1")
        result = "postprocessed"
    values = {"MODEL": f"{spec.dataset}/{spec.identifier}", "FOLDS": " ".join(spec.folds),
              "CHECKPOINT": spec.checkpoint, "DOMAIN": domain, "CHANNEL": CHANNEL_SUFFIX, "ENDING": FILE_ENDING,
              "PREDICT_ARGUMENTS": shlex.join(arguments), "POSTPROCESS": postprocess, "RESULT": result}
    text = PREDICT_SH
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def write_predict_script(path: Path, spec: ModelSpec, settings: SubmissionSettings) -> None:
    path.write_text(predict_script(spec, settings))
    path.chmod(0o755)


def dockerfile(spec: ModelSpec) -> str:
    """A Dockerfile that installs the requirements and copies the submission folder into /workspace."""
    return f"""# Challenge image for {spec.dataset}/{spec.identifier}, written by nnUNetv2_uda_submission.
#   docker build -t TEAM .
#   docker container run --gpus "device=0" -m 28G --name TEAM --rm -v $PWD/inputs/:/workspace/inputs/ \\
#       -v $PWD/outputs/:/workspace/outputs/ TEAM:latest /bin/bash -c "sh predict.sh"
FROM {DOCKER_BASE_IMAGE}
WORKDIR /workspace
COPY requirements.txt /workspace/requirements.txt
RUN pip install --no-cache-dir -r /workspace/requirements.txt
COPY . /workspace
RUN python -m compileall -q /workspace/plugin
# CMD, not ENTRYPOINT: the challenge's own command (sh predict.sh) replaces it instead of becoming its arguments
CMD ["sh", "predict.sh"]
"""


def readme(spec: ModelSpec, settings: SubmissionSettings, name: str) -> str:
    """The README.md of the submission folder."""
    domain = settings.domain or "none (nnU-Net's own network)"
    folds = f"fold {spec.folds[0]}" if len(spec.folds) == 1 else f"folds {' '.join(spec.folds)}, averaged"
    postprocessing = (f"`{CONFIG_FILE}`, applied after prediction:\n\n"
                      + "\n".join(f"    {line}" for line in settings.postprocessing.describe().splitlines())
                      if settings.postprocessing is not None else "none")
    return f"""# Challenge submission: {spec.dataset}

Written by `nnUNetv2_uda_submission` (nnunet_uda). `predict.sh` segments every `<case>{CHANNEL_SUFFIX}{FILE_ENDING}` of
`/workspace/inputs` into `/workspace/outputs/<case>{FILE_ENDING}`, as the FLARE challenges run a submission.

- model: `{spec.identifier}`, {folds}, `{spec.checkpoint}`, test-time mirroring
  {'off' if settings.disable_tta else 'on'}
- inference domain (conditional norms): {domain}
- post-processing: {postprocessing}

## Contents

    model/             nnU-Net's export of the model (nnUNetv2_export_model_to_zip, unpacked; nnUNet_results layout)
    plugin/            the nnunet_uda packages (predict.sh puts them on PYTHONPATH and nnUNet_extTrainer)
    requirements.txt   pip requirements: nnunetv2==2.8.1 and the plugin's other dependencies
    predict.sh         prediction, post-processing, outputs (POSIX sh)
    Dockerfile         {DOCKER_BASE_IMAGE} + requirements.txt + this folder in /workspace

## Run

Docker, as the challenge runs it:

    docker build -t team .
    docker container run --gpus "device=0" -m 28G --name team --rm -v $PWD/inputs/:/workspace/inputs/ \\
        -v $PWD/outputs/:/workspace/outputs/ team:latest /bin/bash -c "sh predict.sh"

Without Docker, in a Python environment with `pip install -r requirements.txt`:

    sh predict.sh INPUTS OUTPUTS                 # or SUBMISSION_INPUTS / SUBMISSION_OUTPUTS
    SUBMISSION_DEVICE=cpu sh predict.sh INPUTS OUTPUTS

One case at a time with the time and memory of each (nnunet_uda installed):

    nnUNetv2_uda_submission_run -s {name} -i INPUTS -o OUTPUTS
"""


# ----------------------------------------------------------------------------------------------------------------
# measuring a process tree


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


class TreeMonitor:
    """Samples the memory (and GPU memory) of a process tree every ``interval`` seconds, on a fixed schedule, in a
    background thread while in a ``with``; ``samples`` holds (time, RAM bytes, GPU MB) of every sample."""

    def __init__(self, root: int, interval: float, gpu: bool = False):
        self.root, self.interval, self.gpu = root, interval, gpu
        self.samples: list[tuple[float, int, int]] = []
        self.end = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.end = time.perf_counter()

    def _poll(self) -> None:
        due = time.perf_counter()
        while True:
            self.sample()
            due += self.interval
            if self._stop.wait(max(due - time.perf_counter(), 0.0)):
                return

    def sample(self) -> None:
        now = time.perf_counter()
        tree = tree_pids(process_parents(), self.root)
        ram = sum(process_memory(pid) for pid in tree)
        gpu = sum(mb for pid, mb in gpu_memory_by_pid().items() if pid in tree) if self.gpu else 0
        self.samples.append((now, ram, gpu))

    def peak(self, column: int) -> float:
        return max((sample[column] for sample in self.samples), default=0)

    def area(self, column: int) -> float:
        """The area under a column's curve up to the end of the ``with``: :func:`area_under_curve`."""
        return area_under_curve([s[0] for s in self.samples], [s[column] for s in self.samples], self.end)


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
    return Measurement(process.returncode, wall, max(monitor.peak(1), largest_process) / MB,
                       float(monitor.peak(2)) if gpu else None, monitor.area(1) / MB,
                       monitor.area(2) if gpu else None)


# ----------------------------------------------------------------------------------------------------------------
# running a submission one case at a time


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
