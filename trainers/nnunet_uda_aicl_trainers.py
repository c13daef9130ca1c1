"""Thin module for nnU-Net's trainer search (nnUNet_extTrainer): AICL and its variants."""
from nnunet_uda.training import (nnUNetTrainerAICL, nnUNetTrainerAICL_ColdStart, nnUNetTrainerAICL_noCSC,  # noqa: F401
                                 nnUNetTrainerAICL_noFPC, nnUNetTrainerAICL_noFPC_noCSC,
                                 nnUNetTrainerAICL_OrganAdaptive, nnUNetTrainerAICL_InfoNCECSC,
                                 nnUNetTrainerAICL_DiceCSC, nnUNetTrainerAICL_DiceCSC_Adam,
                                 nnUNetTrainerAICL_DiceCSC_Adam_LabeledAnchors, nnUNetTrainerAICL_noFPC_noCSC_Adam)
