"""Brief training runs for tests, demos and benchmarks, without new trainer classes.

Any nnunet_uda trainer reads these environment variables when it is constructed (they must be
exported so nnU-Net's data-augmentation workers and DDP ranks see the same values):

- ``nnUNet_uda_epochs``: number of epochs (nnU-Net's default 1000);
- ``nnUNet_uda_iterations``: training iterations per epoch (default 250);
- ``nnUNet_uda_val_iterations``: validation iterations per epoch (default 50).

Example: ``nnUNet_uda_epochs=2 nnUNet_uda_iterations=5 nnUNet_uda_val_iterations=1
nnUNetv2_train 900 3d_fullres 0 -tr nnUNetTrainerUDA -p nnUNetResEncUNetMPlans -device cpu``.
nnU-Net's poly learning rate stretches to the chosen length; loss schedules counted in epochs
(AICL's warm-up and ramps) do not, so a brief run may end before they do.
"""
from __future__ import annotations

import os

SETTINGS = {
    "nnUNet_uda_epochs": "num_epochs",
    "nnUNet_uda_iterations": "num_iterations_per_epoch",
    "nnUNet_uda_val_iterations": "num_val_iterations_per_epoch",
}


def apply_brief_settings(trainer) -> None:
    """Override the trainer's epoch and iteration counts from the environment, if set."""
    for variable, attribute in SETTINGS.items():
        value = os.environ.get(variable)
        if value is None:
            continue
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{variable}={value!r}: expected a positive whole number")
        setattr(trainer, attribute, int(value))
        trainer.print_to_log_file(f"{variable}: {attribute} = {value}")
