"""Thin module for nnU-Net's trainer search (nnUNet_extTrainer): AICL and its variants."""
from nnunet_uda.training import (nnUNetTrainerAICL, nnUNetTrainerAICL_noFPC, nnUNetTrainerAICL_noCSC,  # noqa: F401
                                 nnUNetTrainerAICL_noFPC_noCSC, nnUNetTrainerAICL_SourceAnchors,
                                 nnUNetTrainerAICL_ColdStart, nnUNetTrainerAICL_OrganAdaptive,
                                 nnUNetTrainerAICL_SGD_Eq5, nnUNetTrainerAICL_SGD_InfoNCECSC,
                                 nnUNetTrainerAICL_SGD_DiceCSC, nnUNetTrainerAICL_SGD_noFPC_noCSC)
