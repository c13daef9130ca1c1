"""Speed of an exported model (``nnUNetv2_uda_export``) against the plugin model it is made from, on the CPU.

Builds a small phantom, trains ``nnUNetTrainerUDA`` fold 0 briefly through ``nnUNetv2_train`` (only the timing
matters, not the weights), exports it through ``nnUNetv2_uda_export`` and times in this process, torch on
``--threads`` threads, the median over ``--repeats`` interleaved runs (each run calls every contender once, after a
warm-up run, so the machine's load hits all alike) of:

1. the whole inference of one test case of the exported domain through nnU-Net's predictor (mirroring on):
   the plugin model against the export;
2. one forward pass of the model's patch: the plugin network, the exported one and a freshly built nnU-Net network
   of the same plans (the same computation as the export);
3. one forward pass of a ``--shape`` input through ResEnc M's 3d_fullres network (as nnU-Net plans it for a 128^3
   patch) with conditional norms of three domains against its folded plain network.

Prints a markdown table with the ratios to the export and writes it to ``WORK/export_speed.md``.
Results: docs/deployment.md#speed.

    python examples/benchmark_export.py --work benchmark_output/export
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch import nn

from nnunet_uda.benchmarking import RESENC_M
from nnunet_uda.data.raw import load_dataset_json
from nnunet_uda.domains import DomainTable
from nnunet_uda.export import EXPORT_FILE, PLAIN_TRAINER, fold_network_weights, plain_network
from nnunet_uda.nn.network import DomainConditionedUNet
from nnunet_uda.pipeline import (PhantomSettings, add_run_arguments, command, final_checkpoint, prepare_phantom,
                                 train_folds, work_runner)
from nnunet_uda.planning import DEFAULT_PLANS

TRAINER = "nnUNetTrainerUDA"
PHANTOM = PhantomSettings(n_source=5, n_target=2, n_test=1)  # 5 labeled CT cases for nnU-Net's 5 folds
RESENC_M_DOMAINS = ["CT", "T1", "T2"]
CONTENDERS = ("plugin", "export", "nnU-Net")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="benchmark_output/export")
    parser.add_argument("--dataset", type=int, default=996)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the timed runs")
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 64),
                        help="the ResEnc M network's input (multiples of 32)")
    add_run_arguments(parser, epochs=1, iterations=5, phantom_cases=False)
    args = parser.parse_args(argv)
    if any(s <= 0 or s % 32 for s in args.shape):
        parser.error(f"--shape {' '.join(map(str, args.shape))}: ResEnc M's 6 stages need multiples of 32")
    return args


def interleaved_medians(calls: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each call over ``repeats`` runs, each run calling every one once in turn (after one
    warm-up run), so that the machine's load hits all alike."""
    times = {name: [] for name in calls}
    for run in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if run:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def predictor(folder):
    """nnU-Net's predictor of fold 0 of the model in ``folder``, on the CPU."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    loaded = nnUNetPredictor(device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    loaded.initialize_from_trained_model_folder(str(folder), (0,), "checkpoint_final.pth")
    return loaded


def folded_resenc_m(domain: int) -> tuple[nn.Module, nn.Module]:
    """ResEnc M's network with conditional norms of :data:`RESENC_M_DOMAINS` (random per-domain affines) and the
    plain network with ``domain``'s folded in."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    conditional = DomainConditionedUNet(ResidualEncoderUNet(**RESENC_M), RESENC_M_DOMAINS, RESENC_M_DOMAINS[domain])
    with torch.no_grad():
        for name, parameter in conditional.named_parameters():
            if "norm" in name:
                parameter.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    plain = ResidualEncoderUNet(**RESENC_M)
    plain.load_state_dict(fold_network_weights(conditional.state_dict(), plain.state_dict(), domain))
    return conditional.eval(), plain.eval()


def test_case(raw, domain: str):
    """The first test case of ``domain`` in the raw dataset ``raw``: its name and its image file."""
    dataset_json = load_dataset_json(raw)
    table, suffix = DomainTable.from_dataset_json(dataset_json), "_0000" + dataset_json["file_ending"]
    return next((path.name[:-len(suffix)], path) for path in sorted((raw / "imagesTs").glob("*" + suffix))
                if table.domain_of(path.name[:-len(suffix)]) == domain)


def size(shape) -> str:
    return "x".join(map(str, shape))


def speed_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    lines = ["| what | plugin model | export | nnU-Net's network from the same plans |", "|---|---|---|---|"]
    for what, medians in rows:
        cells = [f"{medians[name] * 1e3:.0f} ms ({medians[name] / medians['export']:.2f})" if name in medians else ""
                 for name in CONTENDERS]
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    work, run = work_runner(args)
    raw = prepare_phantom(run, args.dataset, PHANTOM)
    train_folds(run, raw, args.dataset, TRAINER, (0,))
    root = work / "exported"
    run("export", command("nnUNetv2_uda_export"), "-d", str(args.dataset), "-tr", TRAINER, "-f", "0",
        "-chk", "checkpoint_final.pth", "-o", str(root), "--overwrite")
    exported_folder = root / raw.name / f"{PLAIN_TRAINER}__{DEFAULT_PLANS}__3d_fullres"
    domain = json.loads((exported_folder / EXPORT_FILE).read_text())["domain"]

    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    os.environ.update(run.env)  # nnU-Net's predictor finds the plugin trainer through nnUNet_extTrainer
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {"plugin": predictor(final_checkpoint(run, raw, TRAINER, 0).parent.parent),
              "export": predictor(exported_folder)}
    case, image_file = test_case(raw, domain)
    image, properties = SimpleITKIO().read_images([str(image_file)])
    export = models["export"]
    fresh = plain_network(export.plans_manager.plans, export.dataset_json, "3d_fullres").eval()
    patch = tuple(export.configuration_manager.patch_size)
    x = torch.randn(1, 1, *patch)
    conditional, plain = folded_resenc_m(1)
    y = torch.randn(1, 1, *args.shape)

    load_before = os.getloadavg()[0]
    rows = [(f"the phantom model, one case (`{case}`, {size(image.shape[1:])}), whole inference with mirroring",
             interleaved_medians({name: (lambda m=m: m.predict_single_npy_array(image, properties))
                                  for name, m in models.items()}, args.repeats))]
    with torch.no_grad():
        rows.append((f"the phantom model, one forward pass of its {size(patch)} patch", interleaved_medians(
            {**{name: (lambda m=m: m.network(x)) for name, m in models.items()}, "nnU-Net": lambda: fresh(x)},
            args.repeats)))
        rows.append((f"ResEnc M's 3d_fullres network, one forward pass, {size(args.shape)}", interleaved_medians(
            {"plugin": lambda: conditional(y), "export": lambda: plain(y)}, args.repeats)))
    load_after = os.getloadavg()[0]
    text = (f"Medians of {args.repeats} interleaved runs on the CPU ({os.cpu_count()} cores, torch on {args.threads} "
            f"thread{'s' if args.threads > 1 else ''}; load average {load_before:.1f} before, {load_after:.1f} "
            f"after), ratios to the export (domain {domain} folded):\n\n{speed_table(rows)}\n")
    (work / "export_speed.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
