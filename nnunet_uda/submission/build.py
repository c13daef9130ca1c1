"""The challenge submission folder of a trained model.

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
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import shlex
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from nnunet_uda.data.raw import atomic_folder
from nnunet_uda.postprocessing import CONFIG_FILE, PostprocessingConfig
from nnunet_uda.submission.challenge import CHANNEL_SUFFIX, FILE_ENDING, SubmissionError
from nnunet_uda.submission.model import (ModelSpec, check_challenge_format, check_trained_model, inference_domain,
                                         postprocessing_config)

# The FLARE 2024 paper's environment (Table 2: PyTorch 2.4.0, CUDA 12.1); its torch satisfies nnunetv2 2.8.1.
DOCKER_BASE_IMAGE = "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime"


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
