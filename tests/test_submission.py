"""Challenge submissions on the CPU, without Docker: nnUNetv2_uda_submission builds the folder of a tiny model
trained with nnU-Net's real commands, nnUNetv2_uda_submission_run runs its predict.sh (with sh, as the challenge
does) one case at a time. The runner's own mechanics (statuses, CSV, memory, GPU polling) are tested first with
stand-in predict.sh scripts that take a fraction of a second."""
import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import train_tiny_phantom

from nnunet_uda.cli.submission import main, run_main
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
def model(tmp_path_factory):
    """A tiny nnUNetTrainerUDA model (fold 0), its submission with the flare post-processing, and a run of it
    on the T1 and the T2 test image."""
    paths = train_tiny_phantom(tmp_path_factory.mktemp("submission"), DATASET, TRAINER,
                               ("--n_source", "5", "--n_target", "1"), iterations=1, resume=False)
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
    submission = model["submission"]
    assert sorted(p.name for p in submission.iterdir()) == ["Dockerfile", "README.md", "model", "plugin",
                                                            "postprocessing.json", "predict.sh", "requirements.txt"]
    trained = submission / "model" / NAME / f"{TRAINER}__{DEFAULT_PLANS}__3d_fullres"
    assert (trained / "fold_0" / "checkpoint_final.pth").is_file() and (trained / "plans.json").is_file()
    assert not (trained / "fold_1").exists() and not list(submission.glob("*.zip"))
    assert "nnunetv2==2.8.1" in (submission / "requirements.txt").read_text().splitlines()
    dockerfile = (submission / "Dockerfile").read_text()
    assert "FROM pytorch/pytorch:" in dockerfile and "-cuda" in dockerfile and "runtime" in dockerfile
    assert 'CMD ["sh", "predict.sh"]' in dockerfile.splitlines()
    assert not [line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT")]
    predict = (submission / "predict.sh").read_text()
    assert "export nnUNet_uda_inference_domain=T1" in predict  # the stored default: the first target domain
    assert "-f 0 -chk checkpoint_final.pth" in predict and "postprocessing.json" in predict
    assert subprocess.run(["sh", "-n", str(submission / "predict.sh")]).returncode == 0
    # the plugin travels with the folder: predict.sh's PYTHONPATH finds the copy, not the development tree
    # (asked from the folder, as the challenge runs it: ``python -c`` puts the working directory first)
    assert not list((submission / "plugin").rglob("__pycache__"))  # not even after the run
    found = subprocess.run([sys.executable, "-c", "import nnunet_uda, nnunet_uda_trainers; "
                            "print(nnunet_uda.__file__); print(nnunet_uda_trainers.__file__)"],
                           env=dict(os.environ, PYTHONPATH=str(submission / "plugin"), PYTHONDONTWRITEBYTECODE="1"),
                           cwd=submission, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(f).is_relative_to(submission / "plugin") for f in found)
    assert (submission / "plugin" / "nnunet_uda_trainers" / "nnunet_uda_trainer_classes.py").is_file()
    assert "Run" in (submission / "README.md").read_text()


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
    raw = sitk.ReadImage(str(model["work"] / "predictions" / "T1" / "ph_T1_ts000.nii.gz"))
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


def test_chosen_domain_without_postprocessing(model, nnunet_env, tmp_path):
    """-domain T2 and no post-processing: predict.sh alone gives what nnUNetv2_predict gives with the T2 norms."""
    spec = ModelSpec(NAME, "3d_fullres", TRAINER, DEFAULT_PLANS, ("0",), "checkpoint_final.pth")
    submission = build_submission(spec, tmp_path / "t2", domain="T2")
    assert not (submission / "postprocessing.json").exists()
    assert "export nnUNet_uda_inference_domain=T2" in (submission / "predict.sh").read_text()
    inputs = _inputs(tmp_path / "inputs", [])
    shutil.copy(model["inputs"] / "ph_T2_ts000_0000.nii.gz", inputs)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               SUBMISSION_DEVICE="cpu")
    subprocess.run(["sh", "predict.sh", str(inputs), str(tmp_path / "outputs")], cwd=submission, env=env, check=True,
                   capture_output=True)
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["ph_T2_ts000.nii.gz"]
    direct = sitk.GetArrayFromImage(sitk.ReadImage(str(model["work"] / "predictions" / "T2" / "ph_T2_ts000.nii.gz")))
    result = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "outputs" / "ph_T2_ts000.nii.gz")))
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

    def broken(spec):
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
