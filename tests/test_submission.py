"""Challenge submissions on the CPU, without Docker: nnUNetv2_uda_submission builds the folder of a tiny model
trained with nnU-Net's real commands, nnUNetv2_uda_submission_run runs its predict.sh (with sh, as the challenge
does) one case at a time. The runner's own mechanics (statuses, CSV, memory, GPU polling) are tested first with
stand-in predict.sh scripts that take a fraction of a second."""
import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from test_export import assert_plugin_blocked, without_plugin

from nnunet_uda.cli.submission import main, run_main
from nnunet_uda.export import EXPORT_FILE
from nnunet_uda.pipeline import command
from nnunet_uda.planning import DEFAULT_PLANS
from nnunet_uda.postprocessing import load_config, postprocess_image
from nnunet_uda.submission.build import build_submission
from nnunet_uda.submission.challenge import SubmissionError
from nnunet_uda.submission.measure import area_under_curve, gpu_present, parse_compute_apps, tree_pids
from nnunet_uda.submission.model import ModelSpec
from nnunet_uda.submission.runner import run_submission

DATASET = 953
NAME = "Dataset953_UDAPhantom"
TRAINER = "nnUNetTrainerUDA"


# ----------------------------------------------------------------------------------------------------------------
# the runner with stand-in submissions

FAKE_PREDICT = """#!/bin/sh
# stand-in: copies the image as the label map, holds about 200 MB for a moment; cases named bad* fail, quiet* write nothing
set -eu
for image in "$1"/*_0000.nii.gz; do
    name=$(basename "$image" _0000.nii.gz)
    case "$name" in bad*) echo "something broke in $name" >&2; exit 3;; quiet*) exit 0;; esac
    python -c "import time; block = b'x' * (200 << 20); time.sleep(0.6)"
    cp "$image" "$2/$name.nii.gz"
done
"""

# a stand-in nvidia-smi: one GPU, and 100 MB of GPU memory for every process on the machine
FAKE_NVIDIA_SMI = """#!/bin/sh
case "$*" in
    *query-gpu*) echo "NVIDIA Stand-in GPU";;
    *query-compute-apps*) for p in /proc/[0-9]*; do echo "${p#/proc/}, 100"; done;;
esac
"""


def _fake_submission(folder: Path) -> Path:
    folder.mkdir()
    (folder / "predict.sh").write_text(FAKE_PREDICT)
    return folder


def _inputs(folder: Path, cases) -> Path:
    folder.mkdir()
    for case in cases:
        (folder / f"{case}_0000.nii.gz").write_bytes(case.encode())
    return folder


def _rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as file:
        return {row["case"]: row for row in csv.DictReader(file)}


def test_runner_runs_each_case_alone_and_reports_failures(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                               if not (Path(p) / "nvidia-smi").exists()))  # no GPU, whatever the host
    submission = _fake_submission(tmp_path / "submission")
    inputs = _inputs(tmp_path / "inputs", ["a", "bad", "quiet", "z"])
    outputs = tmp_path / "outputs"
    with pytest.raises(SystemExit, match=r"2 of 4 cases failed \(bad, quiet\)"):
        run_main(["-s", str(submission), "-i", str(inputs), "-o", str(outputs)])
    err = capsys.readouterr().err
    assert "case bad: predict.sh exited with code 3" in err and "something broke in bad" in err
    assert "case quiet: predict.sh wrote no quiet.nii.gz" in err
    assert sorted(p.name for p in outputs.glob("*.nii.gz")) == ["a.nii.gz", "z.nii.gz"]
    assert (outputs / "z.nii.gz").read_bytes() == b"z"  # each case alone: z's run saw only z's image
    rows = _rows(outputs / "efficiency.csv")
    assert list(rows) == ["a", "bad", "quiet", "z"]
    assert [rows[c]["status"] for c in rows] == ["ok", "failed", "no output", "ok"]
    assert [rows[c]["exit_code"] for c in rows] == ["0", "3", "0", "0"]
    for case in ("a", "z"):
        wall, peak = float(rows[case]["wall_time_s"]), float(rows[case]["peak_ram_mb"])
        assert 0.6 <= wall < 60
        assert 200 <= peak < 2000  # the bytearray, plus the interpreter
        assert 200 * 0.5 <= float(rows[case]["auc_ram_time_mb_s"]) <= peak * wall  # 200 MB held for 0.6 s
        assert rows[case]["peak_gpu_mb"] == rows[case]["auc_gpu_time_mb_s"] == ""
    assert (outputs / "logs" / "bad.log").read_text().strip() == "something broke in bad"


def test_runner_polls_gpu_memory_of_the_process_tree(tmp_path, monkeypatch):
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_folder / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    assert gpu_present()
    report = run_submission(_fake_submission(tmp_path / "submission"), _inputs(tmp_path / "inputs", ["a"]),
                            tmp_path / "outputs", csv_path=tmp_path / "runs" / "a.csv", interval=0.05, progress=False)
    assert report.csv == tmp_path / "runs" / "a.csv" and (tmp_path / "runs" / "logs" / "a.log").is_file()
    gpu = float(_rows(report.csv)["a"]["peak_gpu_mb"])
    # sh, then sh with its python child: 100 MB for each process of the tree alive at a sample, none from elsewhere
    assert gpu in (100, 200, 300) and report.results[0].measurement.peak_gpu_mb == gpu
    wall = report.results[0].measurement.wall_time_s
    assert 100 * 0.6 <= float(_rows(report.csv)["a"]["auc_gpu_time_mb_s"]) <= gpu * wall + 1


def test_area_under_curve_is_flares_on_a_regular_schedule():
    """FLARE24's load_json.py: np.round(sum(samples) * 0.1), samples every 0.1 s."""
    values = [120.0, 450.0, 452.0, 300.0, 80.0]
    times = [10 + 0.1 * i for i in range(5)]
    assert area_under_curve(times, values, end=10.5) == pytest.approx(sum(values) * 0.1)
    assert area_under_curve([0.0, 0.1, 0.4], [100.0, 200.0, 50.0], end=0.5) == pytest.approx(10 + 60 + 5)  # a late one
    assert area_under_curve([], [], end=1.0) == 0.0


def test_process_tree_and_nvidia_smi_parsing():
    assert tree_pids({2: 1, 3: 2, 4: 1, 5: 3, 6: 9}, 2) == {2, 3, 5}
    assert parse_compute_apps("12, 300\n13, [N/A]\n12, 50\nNo running processes found\n") == {12: 350}


def test_runner_errors_are_clear(tmp_path):
    inputs = _inputs(tmp_path / "inputs", ["a"])
    with pytest.raises(SubmissionError, match="not a submission folder"):
        run_submission(tmp_path, inputs, tmp_path / "out", progress=False)
    submission = _fake_submission(tmp_path / "submission")
    with pytest.raises(SubmissionError, match=r"no <case>_0000.nii.gz images; check -i"):
        run_submission(submission, submission, tmp_path / "out", progress=False)
    with pytest.raises(SubmissionError, match="is the inputs folder"):
        run_submission(submission, inputs, inputs, progress=False)


# ----------------------------------------------------------------------------------------------------------------
# a real model


@pytest.fixture(scope="module")
def model(uda_model):
    """The tiny nnUNetTrainerUDA model (fold 0), its submission with the flare post-processing, and a run of it
    on the T1 and the T2 test image."""
    paths = uda_model
    work, run = paths["work"], paths["run"]
    submission = work / "submission"
    run("submission", command("nnUNetv2_uda_submission"), "-d", str(DATASET), "-tr", TRAINER, "-f", "0",
        "-postprocess", "flare", "-o", str(submission))
    inputs = work / "challenge_inputs"
    inputs.mkdir()
    for image in sorted((paths["raw"] / "imagesTs").glob("ph_T*_0000.nii.gz")):
        shutil.copy(image, inputs / image.name)
    # on the CPU even where there is a GPU, so that the outputs can be compared with the fixture's CPU predictions
    run("run", command("nnUNetv2_uda_submission_run"), "-s", str(submission), "-i", str(inputs), "-o",
        str(work / "challenge_outputs"), extra_env={"SUBMISSION_DEVICE": "cpu"})
    return dict(paths, submission=submission, inputs=inputs, outputs=work / "challenge_outputs")


def test_submission_folder_is_complete(model):
    """Plain nnU-Net and the post-processing code: the model exported with the stored domain (T1), no trainer code."""
    submission = model["submission"]
    assert sorted(p.name for p in submission.iterdir()) == ["Dockerfile", "README.md", "model", "postprocessing",
                                                            "postprocessing.json", "predict.sh", "requirements.txt"]
    assert [p.name for p in (submission / "model").iterdir()] == [NAME]
    trained = submission / "model" / NAME / f"nnUNetTrainer__{DEFAULT_PLANS}__3d_fullres"
    assert sorted(p.name for p in (trained / "fold_0").rglob("*") if p.is_file()) == [
        "checkpoint_final.pth", "progress.png", "summary.json"]
    assert "uda" not in json.loads((trained / "plans.json").read_text())
    assert json.loads((trained / EXPORT_FILE).read_text())["domain"] == "T1"  # the stored default
    checkpoint = torch.load(trained / "fold_0" / "checkpoint_final.pth", weights_only=False)
    assert checkpoint["trainer_name"] == "nnUNetTrainer"
    assert not (trained / "fold_1").exists() and not list(submission.glob("*.zip"))
    requirements = (submission / "requirements.txt").read_text().splitlines()
    assert "nnunetv2==2.8.1" in requirements and {"numpy", "scipy", "tqdm"} <= set(requirements)
    dockerfile = (submission / "Dockerfile").read_text()
    assert "FROM pytorch/pytorch:" in dockerfile and "-cuda" in dockerfile and "runtime" in dockerfile
    assert 'CMD ["sh", "predict.sh"]' in dockerfile.splitlines()
    assert "RUN python -m compileall -q /workspace/postprocessing" in dockerfile.splitlines()
    assert not [line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT")]
    predict = (submission / "predict.sh").read_text()
    assert "nnUNet_extTrainer" not in predict and "nnUNet_uda_inference_domain" not in predict
    assert "conditional norms of domain T1 are folded" in predict
    assert "-tr nnUNetTrainer -p nnUNetResEncUNetMPlans -f 0 -chk checkpoint_final.pth" in predict
    assert "postprocessing.json" in predict
    assert subprocess.run(["sh", "-n", str(submission / "predict.sh")]).returncode == 0
    # the post-processing code, and nothing else of the plugin, travels with the folder
    code = sorted(p.relative_to(submission / "postprocessing").as_posix()
                  for p in (submission / "postprocessing").rglob("*") if p.is_file())
    assert "nnunet_uda/postprocessing.py" in code and "nnunet_uda/cli/postprocess.py" in code
    assert not [f for f in code if f.startswith(("nnunet_uda/training", "nnunet_uda/nn/", "nnunet_uda_trainers"))]
    assert not list((submission / "postprocessing").rglob("__pycache__"))  # not even after the run
    readme = (submission / "README.md").read_text()
    assert "Run" in readme and "exported from `nnUNetTrainerUDA__" in readme


def test_outputs_have_the_input_geometry(model):
    for image in sorted(model["inputs"].iterdir()):
        label = model["outputs"] / image.name.replace("_0000.nii.gz", ".nii.gz")
        source, result = sitk.ReadImage(str(image)), sitk.ReadImage(str(label))
        assert result.GetSize() == source.GetSize()
        assert np.allclose(result.GetSpacing(), source.GetSpacing())
        assert np.allclose(result.GetOrigin(), source.GetOrigin())
        assert np.allclose(result.GetDirection(), source.GetDirection())


def test_csv_has_one_sensible_row_per_case(model):
    rows = _rows(model["outputs"] / "efficiency.csv")
    assert sorted(rows) == ["ph_T1_ts000", "ph_T2_ts000"]
    for row in rows.values():
        assert row["status"] == "ok" and row["exit_code"] == "0"
        assert 0 < float(row["wall_time_s"]) < 600
        assert 100 < float(row["peak_ram_mb"]) < 16000  # torch and nnU-Net alone take a few hundred MB
        assert (row["peak_gpu_mb"] != "") == gpu_present()
    assert sorted(p.name for p in (model["outputs"] / "logs").iterdir()) == ["ph_T1_ts000.log", "ph_T2_ts000.log"]


def test_postprocessing_matches_a_direct_run(model):
    """The T1 case predicted as nnUNetv2_predict does with the T1 norms, post-processed by nnunet_uda directly."""
    config = load_config(model["submission"] / "postprocessing.json")
    assert config.labels  # the flare preset matched the phantom's organs
    raw = sitk.ReadImage(str(model["predictions"] / "ph_T1_ts000.nii.gz"))
    expected = sitk.GetArrayFromImage(postprocess_image(raw, config))
    result = sitk.GetArrayFromImage(sitk.ReadImage(str(model["outputs"] / "ph_T1_ts000.nii.gz")))
    np.testing.assert_array_equal(result, expected)
    assert (sitk.GetArrayFromImage(raw) != expected).any()  # the barely trained model's fragments were cleaned


@pytest.fixture
def nnunet_env(model, monkeypatch):
    """The model's nnU-Net folders (nnUNet_raw, _preprocessed, _results, nnUNet_extTrainer) in this process."""
    for key, value in model["run"].env.items():
        if key.startswith("nnUNet"):
            monkeypatch.setenv(key, value)


def test_postprocessed_submission_runs_with_only_its_own_code(model, tmp_path):
    """predict.sh of the flare submission in a process where only the submission's post-processing code imports."""
    inputs = _inputs(tmp_path / "inputs", [])
    shutil.copy(model["inputs"] / "ph_T1_ts000_0000.nii.gz", inputs)
    env = without_plugin(tmp_path / "site", dict(os.environ, SUBMISSION_DEVICE="cpu"),
                         allowed=[model["submission"] / "postprocessing"])
    assert_plugin_blocked(env, tmp_path)
    subprocess.run(["sh", "predict.sh", str(inputs), str(tmp_path / "outputs")], cwd=model["submission"], env=env,
                   check=True, capture_output=True)
    result, expected = (sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "ph_T1_ts000.nii.gz")))
                        for folder in (tmp_path / "outputs", model["outputs"]))
    np.testing.assert_array_equal(result, expected)


def test_chosen_domain_without_postprocessing_needs_no_plugin(model, nnunet_env, tmp_path):
    """-domain CT and no post-processing: predict.sh, with the plugin not importable at all, gives what
    nnUNetv2_predict gives with the plugin and the CT norms."""
    spec = ModelSpec(NAME, "3d_fullres", TRAINER, DEFAULT_PLANS, ("0",), "checkpoint_final.pth")
    submission = build_submission(spec, tmp_path / "ct", domain="CT")
    assert sorted(p.name for p in submission.iterdir()) == ["Dockerfile", "README.md", "model", "predict.sh",
                                                            "requirements.txt"]
    assert (submission / "requirements.txt").read_text().splitlines()[1:] == ["nnunetv2==2.8.1"]
    assert "compileall" not in (submission / "Dockerfile").read_text()
    assert "conditional norms of domain CT are folded" in (submission / "predict.sh").read_text()
    inputs = _inputs(tmp_path / "inputs", [])
    shutil.copy(model["raw"] / "imagesTs" / "ph_CT_ts000_0000.nii.gz", inputs)
    env = without_plugin(tmp_path / "site", dict(os.environ, SUBMISSION_DEVICE="cpu"))
    subprocess.run(["sh", "predict.sh", str(inputs), str(tmp_path / "outputs")], cwd=submission, env=env, check=True,
                   capture_output=True)
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["ph_CT_ts000.nii.gz"]
    direct = sitk.GetArrayFromImage(sitk.ReadImage(str(model["predictions"] / "ph_CT_ts000.nii.gz")))
    result = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "outputs" / "ph_CT_ts000.nii.gz")))
    np.testing.assert_array_equal(result, direct)
    assert not list(submission.rglob("__pycache__"))  # runs leave the folder as it was built


def _build(output: Path, *arguments: str) -> str | None:
    """nnUNetv2_uda_submission for the model; its error message, or None when it succeeds."""
    try:
        main(["-d", str(DATASET), "-tr", TRAINER, "-o", str(output), *arguments])
    except SystemExit as exit:
        return str(exit.code)
    return None


def _nothing_written(output: Path) -> bool:
    return not output.exists() and not list(output.parent.glob(f".{output.name}.incomplete-*"))


@pytest.mark.parametrize("arguments, message", [
    (("-f", "0", "1"), r"fold 1 of the model is not trained \(.*fold_1 does not exist\); trained folds: 0; pass -f"),
    (("-f", "0", "-chk", "checkpoint_nope.pth"), r"fold_0/checkpoint_nope.pth does not exist; finish the training "
                                                 r"\(nnUNetv2_train 953 3d_fullres 0 .* --c\) or choose another"),
    (("-f", "0", "-p", "nnUNetPlans"), r"no trained model in .*nnUNetTrainerUDA__nnUNetPlans__3d_fullres; train it"),
    (("-f", "0", "-domain", "MR"), r"-domain MR is not a domain of the model; its domains: CT, T1, T2"),
    (("-f", "0", "-postprocess", "missing.json"), r"-postprocess: .*missing.json does not exist"),
])
def test_errors_name_the_problem_and_write_nothing(nnunet_env, tmp_path, arguments, message):
    error = _build(tmp_path / "submission", *arguments)
    assert error is not None and re.search(message, error), error
    assert error.startswith("nnUNetv2_uda_submission: ")
    assert _nothing_written(tmp_path / "submission")


def test_failure_while_writing_leaves_nothing(nnunet_env, tmp_path, monkeypatch):
    import nnunet_uda.submission.build as build_module

    def broken(*arguments, **options):
        raise OSError("disk full")

    monkeypatch.setattr(build_module, "dockerfile", broken)
    spec = ModelSpec(NAME, "3d_fullres", TRAINER, DEFAULT_PLANS, ("0",), "checkpoint_final.pth")
    with pytest.raises(OSError, match="disk full"):
        build_submission(spec, tmp_path / "submission")
    assert _nothing_written(tmp_path / "submission")


def test_existing_folder_needs_overwrite(nnunet_env, tmp_path):
    output = tmp_path / "submission"
    output.mkdir()
    (output / "old.txt").write_text("old")
    assert "pass --overwrite" in _build(output, "-f", "0")
    assert (output / "old.txt").is_file()
    assert _build(output, "-f", "0", "--overwrite") is None
    assert not (output / "old.txt").exists() and (output / "predict.sh").is_file()
