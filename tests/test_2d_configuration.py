"""nnU-Net's 2d configuration: planning with ``-c 2d`` and the trainers whose methods have a 3D form elsewhere
running in it with every term active, through the real nnUNetv2_train and nnUNetv2_predict (CISFA's 2d run is in
test_cisfa.py; the base, source-only, self-training and labeled-only trainers add no spatial operation)."""
import json
import math

import torch

from conftest import train_tiny


def logged(run, *names) -> dict:
    logging = torch.load(run["results"] / "checkpoint_final.pth", weights_only=False)["logging"]
    return {name: logging[name] for name in names}


def test_aicl_plans_square_organ_patches_and_trains_with_both_contrasts(unpaired_phantom):
    plans = json.loads((unpaired_phantom["preprocessed"] / "nnUNetResEncUNetMPlans.json").read_text())
    pgps = plans["uda"]["pgps"]["2d"]
    assert len(pgps["patch_size"]) == 2 and len(pgps["stride"]) == 2
    assert (unpaired_phantom["preprocessed"] / "pgps_extents_2d.png").is_file()
    # ColdStart: the contrastive weights ramp up from the first iteration, so PGPS and l_csc run
    run = train_tiny(unpaired_phantom, "nnUNetTrainerAICL_ColdStart", resume=False, configuration="2d",
                     domains=("T1",))
    values = logged(run, "l_fpc", "l_csc", "lambda_fpc")
    assert all(map(math.isfinite, values["l_fpc"] + values["l_csc"])) and values["lambda_fpc"][0] > 0
    assert len(list(run["predictions"].rglob("*.nii.gz"))) == 1  # T1's test case, with T1's norms


def test_co_training_trains_in_2d(semi_supervised_phantom):
    """DVCL: the co-training base, ESM, HqCL's bank and DVCL's queue over pixels (DACL's sampling is the same
    code; CISFA's 2d test predicts with nnU-Net's plain network, as co-training models do)."""
    terms = ("l_cps", "l_hqcl", "l_dvcl")
    run = train_tiny(semi_supervised_phantom, "nnUNetTrainerDVCL", resume=False, configuration="2d", domains=())
    values = logged(run, *terms)
    assert all(math.isfinite(v) for name in terms for v in values[name]), values
    assert (run["results"] / "checkpoint_final.pth").is_file()
