"""Thin module for nnU-Net's trainer search (nnUNet_extTrainer): the classes live in nnunet_uda."""
from nnunet_uda.training import (nnUNetTrainerSelfTraining, nnUNetTrainerSourceOnly, nnUNetTrainerUDA,  # noqa: F401
                                 nnUNetTrainerUDA_Adam)
