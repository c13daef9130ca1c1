"""The challenge submission folder of a trained model.

:func:`build_submission` writes the folder, whole or not at all:

- ``model/``: the model exported to plain nnU-Net (:mod:`nnunet_uda.export`): an ``nnUNet_results`` tree
  ``<dataset>/nnUNetTrainer__<plans>__<configuration>`` with the plans, the dataset.json, the fingerprint and the
  chosen checkpoint, ``progress.png`` and validation summary of each fold. A conditional-norm model (the plugin's
  domain-adaptation trainers) has the norms of one domain folded into nnU-Net's instance norms: the one stored with
  the weights unless another is chosen. nnU-Net runs it as its own model: no plugin code, no ``nnUNet_extTrainer``;
- ``postprocessing/`` (with post-processing only): the plugin's post-processing code, the modules of ``nnunet_uda``
  that ``nnunet_uda.cli.postprocess`` imports and nothing else (:func:`postprocessing_code`); ``predict.sh`` puts the
  folder on ``PYTHONPATH`` for the post-processing step alone;
- ``requirements.txt``: ``nnunetv2`` at the installed version, and the packages the post-processing code imports
  (all of them nnU-Net's own dependencies), installed by the Dockerfile;
- ``predict.sh``: nnU-Net's prediction of every ``*_0000.nii.gz`` of the inputs folder, then the post-processing if
  configured, then ``<case>.nii.gz`` into the outputs folder. POSIX sh, since the challenge starts it with ``sh``;
- ``postprocessing.json`` (with post-processing only): the rules of :mod:`nnunet_uda.postprocessing`, by label value;
- ``Dockerfile``: a PyTorch CUDA runtime image with the requirements and this folder in ``/workspace``; its ``CMD``
  (not an ``ENTRYPOINT``, which would turn the challenge's command into arguments of predict.sh) is
  ``sh predict.sh``;
- ``README.md``: what the folder holds and how to run it.
"""
from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from nnunet_uda.data.raw import atomic_folder
from nnunet_uda.export import PLAIN_TRAINER, ExportError, prepare_export, write_plain_model
from nnunet_uda.postprocessing import CONFIG_FILE, PostprocessingConfig
from nnunet_uda.submission.challenge import CHANNEL_SUFFIX, FILE_ENDING, SubmissionError
from nnunet_uda.submission.model import ModelSpec, check_challenge_format, check_trained_model, postprocessing_config

# The FLARE 2024 paper's environment (Table 2: PyTorch 2.4.0, CUDA 12.1); its torch satisfies nnunetv2 2.8.1.
DOCKER_BASE_IMAGE = "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime"
#: the module predict.sh runs for the post-processing, and the submission folder that holds its code
POSTPROCESS_MODULE = "nnunet_uda.cli.postprocess"
POSTPROCESSING_CODE = "postprocessing"


@dataclass(frozen=True)
class SubmissionSettings:
    """How the submission predicts, besides the model."""

    domain: str | None = None  # the domain folded into the exported network's norms
    postprocessing: PostprocessingConfig | None = None
    disable_tta: bool = False


def build_submission(spec: ModelSpec, output: str | os.PathLike, domain: str | None = None,
                     postprocess: str | None = None, disable_tta: bool = False, overwrite: bool = False) -> Path:
    """Write the submission folder of a trained model to ``output`` (contents in the module docstring).

    ``domain`` chooses the domain folded into a conditional-norm model (default: the one stored with its weights);
    ``postprocess`` is a preset name or a configuration file of :mod:`nnunet_uda.postprocessing`; ``disable_tta``
    turns off nnU-Net's mirroring at prediction (in 3D, one network evaluation per window instead of up to eight).
    The folder is built beside ``output`` and moved into place when complete; an existing, non-empty ``output`` is
    an error unless ``overwrite``. Everything is checked before anything is written.
    """
    output = Path(output)
    folder = check_trained_model(spec)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    check_challenge_format(dataset_json, str(folder / "dataset.json"))
    try:
        plan = prepare_export(folder, spec.folds, (spec.checkpoint,), domain)
    except ExportError as error:
        raise SubmissionError(str(error)) from None
    settings = SubmissionSettings(plan.domain, postprocessing_config(postprocess, dataset_json), disable_tta)
    code, third_party = postprocessing_code() if settings.postprocessing is not None else ({}, set())
    requirements = requirements_txt(third_party)
    _check_output(output, overwrite)
    with atomic_folder(output, overwrite=True) as tmp:
        write_plain_model(plan, tmp / "model" / plan.dataset / plan.identifier, validation_predictions=False)
        for relative, source in code.items():
            (tmp / POSTPROCESSING_CODE / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, tmp / POSTPROCESSING_CODE / relative)
        (tmp / "requirements.txt").write_text(requirements)
        write_predict_script(tmp / "predict.sh", spec, settings)
        if settings.postprocessing is not None:
            (tmp / CONFIG_FILE).write_text(json.dumps(settings.postprocessing.to_json(), indent=2) + "\n")
        (tmp / "Dockerfile").write_text(dockerfile(spec, postprocessing=bool(code)))
        (tmp / "README.md").write_text(readme(spec, settings, output.name))
    return output


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise SubmissionError(f"the output {output} exists and is not a folder: choose another -o")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise SubmissionError(f"the output folder {output} exists and is not empty: remove it, choose another -o, or "
                              f"pass --overwrite to replace it")


def _module_file(package: Path, name: str) -> Path | None:
    """The source file of the plugin module ``name`` (``nnunet_uda.x.y``) in the package folder, if it is one."""
    parts = name.split(".")[1:]
    candidates = [package.joinpath(*parts, "__init__.py")]
    if parts:
        candidates.insert(0, package.joinpath(*parts).with_suffix(".py"))
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def postprocessing_code(module: str = POSTPROCESS_MODULE) -> tuple[dict[str, Path], set[str]]:
    """The plugin's source files that ``module`` imports, directly or through each other, with the ``__init__.py``
    of their packages (path relative to the folder above ``nnunet_uda`` to source file), and the top-level names of
    the other, non-standard modules they import. Imports are read from the source (absolute imports, anywhere in
    a file), so nothing is imported here."""
    import nnunet_uda

    package = Path(nnunet_uda.__file__).parent
    files: dict[str, Path] = {}
    third_party: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # the module and every package above it
            path = _module_file(package, ".".join(parts[:depth]))
            relative = path.relative_to(package.parent).as_posix() if path else None
            if relative is None or relative in files:
                continue
            files[relative] = path
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    imported = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
                else:
                    continue
                for other in imported:
                    top = other.split(".")[0]
                    if top == package.name:
                        if _module_file(package, other) is not None:
                            pending.append(other)
                    elif top not in sys.stdlib_module_names and top != "__future__":
                        third_party.add(top)
    return dict(sorted(files.items())), third_party


def requirements_txt(third_party: Iterable[str] = ()) -> str:
    """``nnunetv2`` at the installed version, and the distributions of the modules ``third_party`` (top-level
    names) that the post-processing code imports."""
    distributions = importlib.metadata.packages_distributions()
    extra = sorted({d for name in third_party for d in distributions.get(name, [name])} - {"nnunetv2"})
    what = "nnU-Net" + (f", and what the post-processing code in {POSTPROCESSING_CODE}/ imports" if extra else "")
    return (f"# pip requirements of the submission: {what}\n"
            + "\n".join([f"nnunetv2=={importlib.metadata.version('nnunetv2')}", *extra]) + "\n")


PREDICT_SH = """#!/bin/sh
# Challenge inference with the nnU-Net model @MODEL@ (folds @FOLDS@, @CHECKPOINT@),
# exported from @SOURCE@ and written by nnUNetv2_uda_submission.
# POSIX sh: the challenge's `sh predict.sh` and `bash predict.sh` both work.
#
# usage: sh predict.sh [INPUTS [OUTPUTS]]
#   INPUTS    folder of <case>_0000.nii.gz images (default: $SUBMISSION_INPUTS, else /workspace/inputs)
#   OUTPUTS   folder for the <case>.nii.gz label maps (default: $SUBMISSION_OUTPUTS, else /workspace/outputs)
#   SUBMISSION_DEVICE=cuda|cpu|mps   (default: cuda where torch finds a GPU, else cpu)
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
INPUTS=${1:-${SUBMISSION_INPUTS:-/workspace/inputs}}
OUTPUTS=${2:-${SUBMISSION_OUTPUTS:-/workspace/outputs}}

# the exported model travels in this folder: nnU-Net's own trainer and network, no plugin code
# @DOMAIN@
export nnUNet_results="$HERE/model"
export PYTHONDONTWRITEBYTECODE=1  # runs leave this folder as it was built
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


def exported_identifier(spec: ModelSpec) -> str:
    """The exported model's folder name in ``model/<dataset>/``."""
    return f"{PLAIN_TRAINER}__{spec.plans}__{spec.configuration}"


def predict_script(spec: ModelSpec, settings: SubmissionSettings) -> str:
    """The text of ``predict.sh`` (see :data:`PREDICT_SH`)."""
    arguments = ["-d", spec.dataset, "-c", spec.configuration, "-tr", PLAIN_TRAINER, "-p", spec.plans,
                 "-f", *spec.folds, "-chk", spec.checkpoint] + (["--disable_tta"] if settings.disable_tta else [])
    if settings.domain is None:
        domain = "its network has no conditional norms: the weights are the trained ones"
    else:
        domain = f"the conditional norms of domain {settings.domain} are folded into its instance norms"
    if settings.postprocessing is None:
        postprocess, result = "# no post-processing", "predictions"
    else:
        postprocess = (f"# the post-processing code travels in {POSTPROCESSING_CODE}/\n"
                       f"PYTHONPATH=\"$HERE/{POSTPROCESSING_CODE}${{PYTHONPATH:+:$PYTHONPATH}}\" "
                       f"python -m {POSTPROCESS_MODULE} \\\n"
                       f"    -i \"$SCRATCH/predictions\" -o \"$SCRATCH/postprocessed\" -config \"$HERE/{CONFIG_FILE}\" "
                       f"-np 1")
        result = "postprocessed"
    values = {"MODEL": f"{spec.dataset}/{exported_identifier(spec)}", "SOURCE": spec.identifier,
              "FOLDS": " ".join(spec.folds), "CHECKPOINT": spec.checkpoint, "DOMAIN": domain,
              "CHANNEL": CHANNEL_SUFFIX, "ENDING": FILE_ENDING, "PREDICT_ARGUMENTS": shlex.join(arguments),
              "POSTPROCESS": postprocess, "RESULT": result}
    text = PREDICT_SH
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def write_predict_script(path: Path, spec: ModelSpec, settings: SubmissionSettings) -> None:
    path.write_text(predict_script(spec, settings))
    path.chmod(0o755)


def dockerfile(spec: ModelSpec, postprocessing: bool = False) -> str:
    """A Dockerfile that installs the requirements and copies the submission folder into /workspace (and compiles
    the post-processing code once, where there is some)."""
    compile_code = f"\nRUN python -m compileall -q /workspace/{POSTPROCESSING_CODE}" if postprocessing else ""
    return f"""# Challenge image for {spec.dataset}/{exported_identifier(spec)}
# (exported from {spec.identifier}), written by nnUNetv2_uda_submission.
#   docker build -t TEAM .
#   docker container run --gpus "device=0" -m 28G --name TEAM --rm -v $PWD/inputs/:/workspace/inputs/ \\
#       -v $PWD/outputs/:/workspace/outputs/ TEAM:latest /bin/bash -c "sh predict.sh"
FROM {DOCKER_BASE_IMAGE}
WORKDIR /workspace
COPY requirements.txt /workspace/requirements.txt
RUN pip install --no-cache-dir -r /workspace/requirements.txt
COPY . /workspace{compile_code}
# CMD, not ENTRYPOINT: the challenge's own command (sh predict.sh) replaces it instead of becoming its arguments
CMD ["sh", "predict.sh"]
"""


def readme(spec: ModelSpec, settings: SubmissionSettings, name: str) -> str:
    """The README.md of the submission folder."""
    domain = (f"{settings.domain}, folded into nnU-Net's instance norms" if settings.domain
              else "none (the network has no conditional norms)")
    folds = f"fold {spec.folds[0]}" if len(spec.folds) == 1 else f"folds {' '.join(spec.folds)}, averaged"
    postprocessing = (f"`{CONFIG_FILE}`, applied after prediction:\n\n"
                      + "\n".join(f"    {line}" for line in settings.postprocessing.describe().splitlines())
                      if settings.postprocessing is not None else "none")
    code = (f"\n    {POSTPROCESSING_CODE}/    the post-processing code (the nnunet_uda modules it needs; predict.sh "
            f"puts it on PYTHONPATH)" if settings.postprocessing is not None else "")
    return f"""# Challenge submission: {spec.dataset}

Written by `nnUNetv2_uda_submission` (nnunet_uda). `predict.sh` segments every `<case>{CHANNEL_SUFFIX}{FILE_ENDING}` of
`/workspace/inputs` into `/workspace/outputs/<case>{FILE_ENDING}`, as the FLARE challenges run a submission.

- model: `{exported_identifier(spec)}` (plain nnU-Net), exported from `{spec.identifier}`
- {folds}, `{spec.checkpoint}`, test-time mirroring {'off' if settings.disable_tta else 'on'}
- domain of the conditional norms: {domain}
- post-processing: {postprocessing}

## Contents

    model/             the model as plain nnU-Net (nnUNet_results layout; nnUNetTrainer, no plugin code){code}
    requirements.txt   pip requirements: nnunetv2 (and what the post-processing imports)
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
