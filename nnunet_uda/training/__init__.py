from nnunet_uda.training.aicl import (nnUNetTrainerAICL, nnUNetTrainerAICL_noFPC, nnUNetTrainerAICL_noCSC,
                                      nnUNetTrainerAICL_noFPC_noCSC, nnUNetTrainerAICL_SourceAnchors,
                                      nnUNetTrainerAICL_ColdStart, nnUNetTrainerAICL_OrganAdaptive,
                                      nnUNetTrainerAICL_SGD_Eq5, nnUNetTrainerAICL_SGD_InfoNCECSC,
                                      nnUNetTrainerAICL_SGD_DiceCSC, nnUNetTrainerAICL_SGD_noFPC_noCSC)
from nnunet_uda.training.base import nnUNetTrainerUDA, nnUNetTrainerUDA_Adam
from nnunet_uda.training.self_training import nnUNetTrainerSelfTraining
from nnunet_uda.training.source_only import nnUNetTrainerSourceOnly

__all__ = ["nnUNetTrainerUDA", "nnUNetTrainerUDA_Adam", "nnUNetTrainerSourceOnly", "nnUNetTrainerSelfTraining",
           "nnUNetTrainerAICL", "nnUNetTrainerAICL_noFPC", "nnUNetTrainerAICL_noCSC", "nnUNetTrainerAICL_noFPC_noCSC",
           "nnUNetTrainerAICL_SourceAnchors", "nnUNetTrainerAICL_ColdStart", "nnUNetTrainerAICL_OrganAdaptive",
           "nnUNetTrainerAICL_SGD_Eq5", "nnUNetTrainerAICL_SGD_InfoNCECSC", "nnUNetTrainerAICL_SGD_DiceCSC",
           "nnUNetTrainerAICL_SGD_noFPC_noCSC"]
