"""The plugin's nnU-Net trainers: every ``nnUNetTrainer`` subclass defined in the modules of this package.

:data:`TRAINERS` maps each class name to its class, and the classes are attributes of this package. A trainer
is listed by defining it in a module here, nowhere else: nnU-Net finds them all through the one thin module in
``trainers/`` (``nnunet_uda_trainer_classes.py`` in the folder ``nnUNetv2_uda_trainer_path`` prints), which imports this package's ``__all__``.
"""
import importlib
import pkgutil

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

TRAINERS: dict[str, type] = {}
for _module in pkgutil.iter_modules(__path__):
    _namespace = vars(importlib.import_module(f"{__name__}.{_module.name}"))
    TRAINERS.update({name: value for name, value in _namespace.items() if isinstance(value, type)
                     and issubclass(value, nnUNetTrainer) and value.__module__ == _namespace["__name__"]})
del _module, _namespace
globals().update(TRAINERS)
__all__ = list(TRAINERS)
