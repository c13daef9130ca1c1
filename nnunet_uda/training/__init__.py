from nnunet_uda.training.base import nnUNetTrainerUDA
from nnunet_uda.training.source_only import nnUNetTrainerSourceOnly

__all__ = ["nnUNetTrainerUDA", "nnUNetTrainerSourceOnly"]
