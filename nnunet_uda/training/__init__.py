from nnunet_uda.training.aicl import (nnUNetTrainerAICL, nnUNetTrainerAICL_ColdStart, nnUNetTrainerAICL_noCSC,
                                      nnUNetTrainerAICL_noFPC, nnUNetTrainerAICL_noFPC_noCSC,
                                      nnUNetTrainerAICL_OrganAdaptive, nnUNetTrainerAICL_InfoNCECSC,
                                      nnUNetTrainerAICL_DiceCSC, nnUNetTrainerAICL_DiceCSC_Adam,
                                      nnUNetTrainerAICL_DiceCSC_Adam_LabeledAnchors, nnUNetTrainerAICL_noFPC_noCSC_Adam)
from nnunet_uda.training.base import nnUNetTrainerUDA, nnUNetTrainerUDA_Adam
from nnunet_uda.training.self_training import nnUNetTrainerSelfTraining
from nnunet_uda.training.source_only import nnUNetTrainerSourceOnly

__all__ = ["nnUNetTrainerUDA", "nnUNetTrainerUDA_Adam", "nnUNetTrainerSourceOnly", "nnUNetTrainerSelfTraining",
           "nnUNetTrainerAICL", "nnUNetTrainerAICL_noFPC", "nnUNetTrainerAICL_noCSC", "nnUNetTrainerAICL_noFPC_noCSC",
           "nnUNetTrainerAICL_noFPC_noCSC_Adam", "nnUNetTrainerAICL_ColdStart", "nnUNetTrainerAICL_OrganAdaptive",
           "nnUNetTrainerAICL_InfoNCECSC", "nnUNetTrainerAICL_DiceCSC", "nnUNetTrainerAICL_DiceCSC_Adam",
           "nnUNetTrainerAICL_DiceCSC_Adam_LabeledAnchors"]
