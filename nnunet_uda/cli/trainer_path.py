"""nnUNetv2_uda_trainer_path: print the folder nnUNet_extTrainer must name."""
from __future__ import annotations

import os


def trainer_path() -> str:
    import nnunet_uda_trainers
    return os.path.dirname(os.path.abspath(nnunet_uda_trainers.__file__))


def main() -> None:
    """Usage: ``export nnUNet_extTrainer=$(nnUNetv2_uda_trainer_path)``."""
    print(trainer_path())


if __name__ == "__main__":
    main()
