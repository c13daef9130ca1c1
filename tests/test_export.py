"""Export to plain nnU-Net (nnUNetv2_uda_export): folding on tiny networks, then the tiny nnUNetTrainerUDA model
exported and predicted by the real nnUNetv2_predict in a process where the plugin cannot be imported."""
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import tiny_unet

from nnunet_uda.cli.export import main
from nnunet_uda.export import (EXPORT_FILE, ExportError, export_plain_model, fold_network_weights, plain_network,
                               write_plain_model)
from nnunet_uda.nn.network import DomainConditionedUNet
from nnunet_uda.pipeline import command
from nnunet_uda.planning import DEFAULT_PLANS

NAME = "Dataset953_UDAPhantom"
TRAINER = "nnUNetTrainerUDA"
DOMAINS = ["CT", "T1", "T2"]
EXPORTED = f"nnUNetTrainer__{DEFAULT_PLANS}__3d_fullres"

# Imported at start-up from PYTHONPATH: every import of the plugin's packages fails, except copies under the folders
# listed in NNUNET_UDA_ALLOWED (a submission's post-processing code).
BLOCKER = """import importlib.machinery
import os
import sys


class BlockPlugin:
    allowed = [p for p in os.environ.get("NNUNET_UDA_ALLOWED", "").split(os.pathsep) if p]

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in ("nnunet_uda", "nnunet_uda_trainers"):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and any(str(spec.origin).startswith(a + os.sep) for a in self.allowed):
            return spec
        raise ImportError(f"{name} is blocked: the plugin is not installed in this process")


sys.meta_path.insert(0, BlockPlugin())
"""


def without_plugin(folder: Path, env: dict, allowed=()) -> dict:
    """``env`` for a process in which the plugin cannot be imported (a sitecustomize.py written to ``folder``), nor
    found by nnU-Net (no nnUNet_extTrainer), and nnunet_uda's own variables unset; copies under ``allowed`` import."""
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in env.items() if k != "nnUNet_extTrainer" and not k.startswith("nnUNet_uda")}
    return dict(env, PYTHONPATH=str(folder), NNUNET_UDA_ALLOWED=os.pathsep.join(map(str, allowed)),
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")


def assert_plugin_blocked(env: dict, cwd: Path) -> None:
    for package in ("nnunet_uda", "nnunet_uda_trainers"):
        result = subprocess.run([sys.executable, "-c", f"import {package}"], env=env, cwd=cwd, capture_output=True,
                                text=True)
        assert result.returncode != 0 and f"{package} is blocked" in result.stderr, result.stderr


# ----------------------------------------------------------------------------------------------------------------
# folding


def conditional(unet, inference_domain="T1"):
    """A domain-conditioned copy of ``unet`` whose domains have different, random norm parameters."""
    net = DomainConditionedUNet(copy.deepcopy(unet), DOMAINS, inference_domain)
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if parameter.ndim == 2 and ".norm." in name:
                parameter.copy_(1 + 0.5 * torch.randn_like(parameter))
    return net


def test_folding_is_exact_for_every_domain(unet_kind):
    """In float64 the folded plain network and the conditional one agree to rounding, for each domain."""
    unet = tiny_unet(unet_kind, deep_supervision=False).double().eval()
    net = conditional(unet).eval()
    x = torch.randn(2, 1, 16, 16, 16, dtype=torch.float64)
    for d in range(len(DOMAINS)):
        plain = copy.deepcopy(unet)
        folded = fold_network_weights(net.state_dict(), plain.state_dict(), d)
        assert list(folded) == list(plain.state_dict())
        plain.load_state_dict(folded)
        with torch.no_grad():
            expected, result = net(x, torch.full((2,), d)), plain(x)
        torch.testing.assert_close(result, expected, rtol=0, atol=1e-10)
    key = next(k for k, v in net.state_dict().items() if v.ndim == 2)  # a conditional norm's weight
    first, last = (fold_network_weights(net.state_dict(), unet.state_dict(), d)[key] for d in (0, 2))
    assert not torch.allclose(first, last)  # the domains differ, so each fold is a different network


def test_folding_rejects_other_networks():
    unet = tiny_unet("plain", deep_supervision=False)
    weights = conditional(unet).state_dict()
    with pytest.raises(ExportError, match=r"unexpected head\.weight"):
        fold_network_weights(dict(weights, **{"head.weight": torch.zeros(1)}), unet.state_dict(), 0)
    with pytest.raises(ExportError, match=r"missing decoder\.seg_layers"):
        fold_network_weights({k: v for k, v in weights.items() if "seg_layers" not in k}, unet.state_dict(), 0)
    with pytest.raises(ExportError, match=r"norm\.weight has shape \(3, 4\), nnU-Net's network \(4,\)$"):
        fold_network_weights(weights, unet.state_dict(), None)  # conditional norms, but no domain chosen
    state = unet.state_dict()
    # a plain network's weights pass as they are
    assert all(v is state[k] for k, v in fold_network_weights(state, state, None).items())


# ----------------------------------------------------------------------------------------------------------------
# the trained model


@pytest.fixture(scope="module")
def exported(uda_model):
    """The tiny model exported with the command, folding CT, not the stored T1, into its own results root. (The
    model's T1 and T2 norms are still equal: one iteration on unlabeled target cases gives them no gradient.)"""
    root = uda_model["work"] / "exported_CT"
    uda_model["run"]("export", command("nnUNetv2_uda_export"), "-d", "953", "-tr", TRAINER, "-domain", "CT",
                     "-o", str(root))
    return dict(uda_model, root=root, folder=root / NAME / EXPORTED,
                source=uda_model["work"] / "nnUNet_results" / NAME / f"{TRAINER}__{DEFAULT_PLANS}__3d_fullres")


def test_exported_folder_is_plain_nnunet(exported):
    folder, source = exported["folder"], exported["source"]
    assert sorted(p.name for p in exported["root"].iterdir()) == [NAME]
    assert sorted(p.name for p in folder.parent.iterdir()) == [EXPORTED]
    plans, dataset_json = (json.loads((folder / n).read_text()) for n in ("plans.json", "dataset.json"))
    assert "uda" not in plans and plans == {k: v for k, v in json.loads((source / "plans.json").read_text()).items()
                                            if k != "uda"}
    assert dataset_json == json.loads((source / "dataset.json").read_text()) and "uda" in dataset_json
    record = json.loads((folder / EXPORT_FILE).read_text())
    assert record["domain"] == "CT" and record["domains"] == DOMAINS and record["trainer"] == TRAINER
    checkpoints = sorted(p.name for p in (source / "fold_0").glob("checkpoint_*.pth")
                         if p.name in ("checkpoint_final.pth", "checkpoint_best.pth"))
    assert "checkpoint_final.pth" in checkpoints
    assert sorted(p.name for p in (folder / "fold_0").glob("*.pth")) == checkpoints
    assert (folder / "fold_0" / "progress.png").is_file() and (folder / "dataset_fingerprint.json").is_file()
    assert sorted(p.name for p in (folder / "fold_0" / "validation").iterdir()) == sorted(
        p.name for p in (source / "fold_0" / "validation").iterdir())
    keys = list(plain_network(plans, dataset_json, "3d_fullres").state_dict())
    for name in checkpoints:
        original = torch.load(source / "fold_0" / name, weights_only=False)
        checkpoint = torch.load(folder / "fold_0" / name, weights_only=False)
        assert sorted(checkpoint) == ["current_epoch", "inference_allowed_mirroring_axes", "init_args",
                                      "network_weights", "trainer_name"]
        assert checkpoint["trainer_name"] == "nnUNetTrainer" and "uda" not in checkpoint["init_args"]["plans"]
        assert checkpoint["init_args"]["configuration"] == "3d_fullres"
        weights = checkpoint["network_weights"]
        assert list(weights) == keys
        for key, value in weights.items():
            source_value = original["network_weights"][key]
            assert torch.equal(value, source_value[0] if source_value.ndim == value.ndim + 1 else source_value), key
        assert any(original["network_weights"][k].ndim == 2 for k in keys)  # there were conditional norms


def predictor_network(folder: Path):
    """The network nnU-Net's predictor builds and loads from a model folder (fold 0), and its patch size."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), (0,), "checkpoint_final.pth")
    return predictor.network.eval(), predictor.configuration_manager.patch_size


def test_export_predicts_like_the_plugin_without_the_plugin(exported, nnunet_env, monkeypatch, tmp_path):
    """The CT test case: nnUNetv2_predict of the export, in a process that cannot import the plugin, against the
    plugin model predicting with the CT norms: equal segmentations. nnU-Net's predictor accumulates the logits in
    float16, so its saved probabilities can differ by a float16 step of a logit (2^-9 between 1 and 2) where the
    networks differ by rounding; the networks' own softmax agrees within 1e-5."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    image = inputs / "ph_CT_ts000_0000.nii.gz"
    image.write_bytes((exported["raw"] / "imagesTs" / image.name).read_bytes())
    arguments = ["-i", str(inputs), "-d", "953", "-c", "3d_fullres", "-f", "0", "-p", DEFAULT_PLANS, "-device", "cpu",
                 "-npp", "0", "-nps", "0", "--save_probabilities", "--disable_progress_bar"]
    exported["run"]("predict", command("nnUNetv2_predict"), *arguments, "-o", str(tmp_path / "plugin"),
                    "-tr", TRAINER, extra_env={"nnUNet_uda_inference_domain": "CT"})
    env = without_plugin(tmp_path / "site", dict(exported["run"].env, nnUNet_results=str(exported["root"])))
    assert_plugin_blocked(env, tmp_path)
    subprocess.run(["nnUNetv2_predict", *arguments, "-o", str(tmp_path / "plain"), "-tr", "nnUNetTrainer"], env=env,
                   cwd=tmp_path, check=True, capture_output=True)
    segmentations = [sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / side / "ph_CT_ts000.nii.gz")))
                     for side in ("plugin", "plain")]
    np.testing.assert_array_equal(segmentations[1], segmentations[0])
    stored = sitk.GetArrayFromImage(sitk.ReadImage(str(exported["predictions"] / "ph_CT_ts000.nii.gz")))
    np.testing.assert_array_equal(segmentations[0], stored)  # the fixture's own CT prediction, for good measure
    plugin, plain = (np.load(tmp_path / side / "ph_CT_ts000.npz")["probabilities"] for side in ("plugin", "plain"))
    assert plain.shape == plugin.shape and np.abs(plain - plugin).max() < 2e-3

    monkeypatch.setenv("nnUNet_uda_inference_domain", "CT")
    (plugin_net, patch_size), (plain_net, _) = map(predictor_network, (exported["source"], exported["folder"]))
    assert type(plain_net).__module__.startswith("dynamic_network_architectures.")
    x = torch.randn(2, 1, *patch_size)
    with torch.no_grad():
        difference = (plugin_net(x).softmax(1) - plain_net(x).softmax(1)).abs().max()
    assert difference < 1e-5


def test_default_domain_is_the_stored_one(exported, tmp_path):
    plan, folder = export_plain_model(exported["work"] / "nnUNet_results", NAME, TRAINER, DEFAULT_PLANS,
                                      "3d_fullres", tmp_path / "out", checkpoints=["checkpoint_final.pth"])
    assert plan.domain == "T1" and folder == tmp_path / "out" / NAME / EXPORTED
    assert json.loads((folder / EXPORT_FILE).read_text())["domain"] == "T1"
    assert sorted(p.name for p in (folder / "fold_0").glob("*.pth")) == ["checkpoint_final.pth"]
    source = torch.load(exported["source"] / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    weights = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)["network_weights"]
    key = "encoder.stem.convs.0.norm.weight"
    assert torch.equal(weights[key], source[key][1]) and not torch.equal(weights[key], source[key][0])


def test_model_without_conditional_norms_exports_as_it_is(exported, tmp_path):
    """A co-training model's checkpoint (network A plain, network B and the optimiser beside it): the weights are
    copied, the rest dropped; a -domain is an error."""
    results = tmp_path / "results"
    plan, _ = export_plain_model(exported["work"] / "nnUNet_results", NAME, TRAINER, DEFAULT_PLANS, "3d_fullres",
                                 results, checkpoints=["checkpoint_final.pth"])
    cotraining = results / NAME / f"nnUNetTrainerCPS__{DEFAULT_PLANS}__3d_fullres"
    (results / NAME / EXPORTED).rename(cotraining)
    checkpoint = torch.load(cotraining / "fold_0" / "checkpoint_final.pth", weights_only=False)
    network_a = checkpoint["network_weights"]
    checkpoint.update(trainer_name="nnUNetTrainerCPS", optimizer_state={"state": {}},
                      uda_state={"network_b": {k: v + 1 for k, v in network_a.items()}})
    torch.save(checkpoint, cotraining / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ExportError, match="-domain T1: the nnUNetTrainerCPS network has no conditional norms"):
        export_plain_model(results, NAME, "nnUNetTrainerCPS", DEFAULT_PLANS, "3d_fullres", tmp_path / "out",
                           domain="T1")
    assert not (tmp_path / "out").exists()
    plan, folder = export_plain_model(results, NAME, "nnUNetTrainerCPS", DEFAULT_PLANS, "3d_fullres",
                                      tmp_path / "out")
    assert plan.domain is None and json.loads((folder / EXPORT_FILE).read_text())["domain"] is None
    exported_checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", weights_only=False)
    assert "uda_state" not in exported_checkpoint and "optimizer_state" not in exported_checkpoint
    assert exported_checkpoint["trainer_name"] == "nnUNetTrainer"
    assert all(torch.equal(exported_checkpoint["network_weights"][k], v) for k, v in network_a.items())


def test_write_copies_only_the_validation_summary_when_asked(exported, tmp_path):
    from nnunet_uda.export import prepare_export

    write_plain_model(prepare_export(exported["source"], ["0"], ["checkpoint_final.pth"], "CT"), tmp_path / "model",
                      validation_predictions=False)
    assert [p.name for p in (tmp_path / "model" / "fold_0" / "validation").iterdir()] == ["summary.json"]


@pytest.fixture
def nnunet_env(exported, monkeypatch):
    """The model's nnU-Net folders in this process."""
    for key, value in exported["run"].env.items():
        if key.startswith("nnUNet"):
            monkeypatch.setenv(key, value)


def _export(output: Path, *arguments: str) -> str | None:
    """nnUNetv2_uda_export of the model; its error message, or None when it succeeds."""
    try:
        main(["-tr", TRAINER, "-o", str(output), *arguments])
    except SystemExit as exit:
        return str(exit.code)
    return None


@pytest.mark.parametrize("arguments, message", [
    (("-d", "999"), r"dataset '999': "),
    (("-d", "Dataset954_Nope"), r"no dataset Dataset954_Nope in .* \(datasets there: Dataset953_UDAPhantom\)"),
    (("-d", "953", "-tr", "nnUNetTrainerNope"), r"no trained model in .*nnUNetTrainerNope__nnUNetResEncUNetMPlans__"
                                                r"3d_fullres \(models of Dataset953_UDAPhantom: nnUNetTrainerUDA__"),
    (("-d", "953", "-c", "2d"), r"no trained model in .*nnUNetTrainerUDA__nnUNetResEncUNetMPlans__2d"),
    (("-d", "953", "-f", "0", "3"), r"fold 3 of the model is not trained \(.*fold_3 does not exist\); trained folds: "
                                    r"0; pass -f"),
    (("-d", "953", "-chk", "checkpoint_nope.pth"), r"fold_0/checkpoint_nope.pth does not exist \(present: .*"
                                                   r"checkpoint_final.pth"),
    (("-d", "953", "-domain", "MR"), r"-domain MR is not a domain of the model; its domains: CT, T1, T2$"),
])
def test_errors_name_the_problem_and_write_nothing(nnunet_env, tmp_path, arguments, message):
    error = _export(tmp_path / "out", *arguments)
    assert error is not None and error.startswith("nnUNetv2_uda_export: ") and re.search(message, error), error
    assert not (tmp_path / "out").exists()


def test_existing_export_needs_overwrite(nnunet_env, tmp_path, capsys):
    folder = tmp_path / "out" / NAME / EXPORTED
    folder.mkdir(parents=True)
    (folder / "old.txt").write_text("old")
    error = _export(tmp_path / "out", "-d", "953")
    assert re.search(r"exists; choose another -o, or pass --overwrite", error), error
    assert [p.name for p in folder.iterdir()] == ["old.txt"] and len(list(folder.parent.iterdir())) == 1
    assert _export(tmp_path / "out", "-d", "953", "--overwrite") is None
    assert not (folder / "old.txt").exists() and (folder / "fold_0" / "checkpoint_final.pth").is_file()
    out = capsys.readouterr().out
    assert "the norms of domain T1" in out and "nnUNetv2_predict -i IMAGES -o PREDICTIONS -d 953 -c 3d_fullres" in out
    assert len(list(folder.parent.iterdir())) == 1  # no temporary folder left
