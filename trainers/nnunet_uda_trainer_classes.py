"""Thin module for nnU-Net's trainer search (nnUNet_extTrainer): every trainer of nnunet_uda.training."""
from nnunet_uda.training import *  # noqa: F401,F403
