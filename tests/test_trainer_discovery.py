"""nnU-Net finds the plugin's trainers through nnUNet_extTrainer, without patching nnunetv2."""
import subprocess
import sys

from nnunet_uda.cli.trainer_path import trainer_path
import nnunet_uda.training


def test_trainer_path_command_prints_the_thin_module_folder():
    out = subprocess.run([sys.executable, "-m", "nnunet_uda.cli.trainer_path"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == trainer_path()
    assert any(p.endswith(".py") and p != "__init__.py" for p in __import__("os").listdir(out))


def test_nnunet_lookup_returns_the_package_classes(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    monkeypatch.setenv("nnUNet_extTrainer", trainer_path())
    assert len(nnunet_uda.training.TRAINERS) >= 15 and "nnUNetTrainerAICL" in nnunet_uda.training.TRAINERS
    for cls in nnunet_uda.training.TRAINERS.values():
        # the very same object (picklable, stable across look-ups), found twice
        assert recursive_find_trainer_class_by_name(cls.__name__) is cls
        assert recursive_find_trainer_class_by_name(cls.__name__) is cls
