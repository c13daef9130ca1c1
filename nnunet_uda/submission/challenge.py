"""How a challenge runs a submission: its image and label-map file names, and the error of a submission.

The FLARE challenges (paper 002, sections 3.1 and 4) run a team's Docker image once per test case with the case's
image ``<case>_0000.nii.gz`` mounted in ``/workspace/inputs`` and expect ``<case>.nii.gz`` in ``/workspace/outputs``;
they score the running time (60 s tolerance) and the GPU memory. The run command is::

    docker container run --gpus "device=0" -m 28G --name TEAM --rm -v $PWD/inputs/:/workspace/inputs/ \\
        -v $PWD/outputs/:/workspace/outputs/ TEAM:latest /bin/bash -c "sh predict.sh"
"""
from __future__ import annotations

FILE_ENDING = ".nii.gz"
CHANNEL_SUFFIX = "_0000"


class SubmissionError(RuntimeError):
    """A submission cannot be built or run; the message names the file or case and the fix."""
