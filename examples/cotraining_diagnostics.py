"""Why a co-training trainer lands where it does: its loss terms' gradients and its pseudo labels, at its weights.

For a co-training trainer (``nnUNetTrainerCPS`` and its subclasses) trained on fold ``all`` of a semi-supervised
dataset of ``examples/benchmark_semi_supervised.py``, at the weights of ``--checkpoint`` (network B, heads and
banks restored as ``--c`` restores them, every weight at its value of that iteration); for the floor
(``nnUNetTrainerLabeledOnly``, one network) part 2 alone:

1. on ``--batches`` batches of the trainer's own loader, each term of its loss (``loss_terms``: L_sup, L_cps, the
   method's): its weight, its value, the norm of the weighted term's gradient over network A's parameters, and
   that gradient's cosine with L_sup's (below 0: the term pulls against the labels);
2. on the unlabeled training cases, against the true labels the dataset keeps (``labelsTr_reference``): Dice per
   class of network A and of network B, the Dice between the two networks' predictions, and per true class the
   share of its voxels each network assigns, with probability above ``--phi`` (DACL's 0.8), to that class and to
   another one: what confidence-selected pseudo labels (DACL's features, L_cps's confident part) train towards;
   and, beside them, the Dice of each network on the labeled training cases (what it fits).

    python examples/cotraining_diagnostics.py --work benchmark_output/semi_supervised_v2 -d 974 \
        -tr nnUNetTrainerDACL --epochs 50 --iterations 20

It trains nothing, but nnU-Net's trainer set-up writes a training log into the trainer's results folder.
Findings: docs/methods/dvcl.md#measured, docs/methods/dacl.md#measured.
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nnunet_uda.data.semi_supervised import REFERENCE_FOLDER
from nnunet_uda.embeddings import central_patch
from nnunet_uda.evaluation.metrics import dice
from nnunet_uda.pipeline import nnunet_environment
from nnunet_uda.planning import DEFAULT_PLANS
from nnunet_uda.training.cotraining import labeled_and_unlabeled


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="the benchmark's working folder")
    parser.add_argument("-d", required=True, help="dataset id of the semi-supervised dataset")
    parser.add_argument("-tr", required=True, help="a co-training trainer trained on fold 'all'")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth")
    parser.add_argument("--epochs", type=int, required=True, help="the training's epochs (its schedules' length)")
    parser.add_argument("--iterations", type=int, required=True, help="the training's iterations per epoch")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--phi", type=float, default=0.8, help="the confidence of a 'reliable' pseudo label")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.update(nnunet_environment(Path(args.work).resolve(), args.epochs, args.iterations, processes=1))
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(args.d, "3d_fullres", "all", args.tr, DEFAULT_PLANS, device=torch.device("cpu"))
    trainer.initialize()
    trainer.load_checkpoint(str(Path(trainer.output_folder) / args.checkpoint))
    print(f"{args.tr}, {args.checkpoint}: iteration {trainer.counters.values['iterations']} of "
          f"{args.epochs * args.iterations}")
    networks = {"A": trainer.network}
    if hasattr(trainer, "loss_terms"):
        print_gradients(trainer, args.batches)
        networks["B"] = trainer.network_b
    print_pseudo_labels(trainer, networks, args.phi)


def print_gradients(trainer, batches: int) -> None:
    """Part 1 of the module docstring."""
    loader, _ = trainer.get_dataloaders()
    parameters = list(trainer.network.parameters())
    rows: dict[str, list[tuple[float, float, float, float]]] = {}
    for _ in tqdm(range(batches), desc="loss terms", unit="batch"):
        batch = next(loader)
        data, target = trainer._to_device(batch)
        terms = trainer.loss_terms(data, target, batch["keys"])
        gradients = {}
        for name, (weight, value) in terms.items():
            grads = torch.autograd.grad(weight * value, parameters, retain_graph=True, allow_unused=True)
            gradients[name] = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                         for g, p in zip(grads, parameters)])
        for name, (weight, value) in terms.items():
            cosine = torch.nn.functional.cosine_similarity(gradients[name], gradients["sup"], dim=0)
            rows.setdefault(name, []).append((weight, value.item(), gradients[name].norm().item(), cosine.item()))
    print(f"\nLoss terms on {batches} training batches (means; gradient over network A's parameters):")
    print("| term | weight | value | weighted gradient norm | cosine with L_sup's |\n|---|---|---|---|---|")
    for name, values in rows.items():
        w, v, g, c = (statistics.mean(column) for column in zip(*values))
        print(f"| {name} | {w:.3f} | {v:.3f} | {g:.4f} | {c:+.2f} |")


def print_pseudo_labels(trainer, networks: dict[str, torch.nn.Module], phi: float) -> None:
    """Part 2 of the module docstring, for ``networks`` (name -> network). Images and true labels go through
    nnU-Net's preprocessor as in training."""
    raw = Path(os.environ["nnUNet_raw"]) / Path(trainer.preprocessed_dataset_folder_base).name
    ending = trainer.dataset_json["file_ending"]
    labeled, unlabeled = labeled_and_unlabeled(trainer.domain_table,
                                               trainer.get_tr_and_val_datasets()[0].identifiers)
    cases = [(case, REFERENCE_FOLDER) for case in unlabeled] + [(case, "labelsTr") for case in labeled]
    preprocessor = trainer.configuration_manager.preprocessor_class(verbose=False)
    patch = trainer.configuration_manager.patch_size
    names = {value: name for name, value in trainer.dataset_json["labels"].items() if name != "ignore"}
    names = [names[c] for c in sorted(names)]
    n = len(names)
    dices = {net: [] for net in networks}
    fit = {net: [] for net in networks}
    if "B" in networks:
        dices["A vs B"] = []
    reliable = {net: np.zeros((n, 3)) for net in networks}  # per true class: voxels, right above phi, wrong above it
    for network in networks.values():
        network.eval()
    with torch.no_grad():
        for case, label_folder in tqdm(cases, desc="pseudo labels", unit="case"):
            unlabeled_case = label_folder == REFERENCE_FOLDER
            files = sorted(str(f) for f in (raw / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"))
            data, reference, _ = preprocessor.run_case(files, str(raw / label_folder / f"{case}{ending}"),
                                                       trainer.plans_manager, trainer.configuration_manager,
                                                       trainer.dataset_json)
            if any(s > p for s, p in zip(data.shape[1:], patch)):
                raise ValueError(f"{case}: shape {data.shape[1:]} exceeds the patch {patch}; this diagnostic "
                                 f"predicts every case in one patch")
            reference = central_patch(reference, patch, fill=-1)[0]
            image = torch.from_numpy(central_patch(np.asarray(data), patch))[None]
            inside = reference >= 0
            predictions = {}
            for net, network in networks.items():
                logits = network(image)
                logits = logits[0] if isinstance(logits, (list, tuple)) else logits
                confidence, predicted = (t[0].numpy() for t in torch.softmax(logits.float(), 1).max(1))
                predictions[net] = predicted
                (dices if unlabeled_case else fit)[net].append(
                    [dice(predicted[inside] == c, reference[inside] == c) for c in range(1, n)])
                if not unlabeled_case:
                    continue
                sure = inside & (confidence > phi)
                for c in range(n):
                    truth = reference == c
                    reliable[net][c] += (truth.sum(), (truth & sure & (predicted == c)).sum(),
                                         (truth & sure & (predicted != c)).sum())
            if "B" in predictions and unlabeled_case:
                dices["A vs B"].append([dice(predictions["A"][inside] == c, predictions["B"][inside] == c)
                                        for c in range(1, n)])
    print_dice(f"Unlabeled training cases ({len(unlabeled)}) against their true labels", dices, names)
    print_dice(f"Labeled training cases ({len(labeled)}): the fit", fit, names)
    print(f"\nShare of each true class's voxels predicted with probability above {phi}: as that class / as another:")
    print("| network | " + " | ".join(names) + " |\n|---|" + "---|" * n)
    for net, counts in reliable.items():
        cells = [f"{right / max(total, 1):.2f} / {wrong / max(total, 1):.2f}" for total, right, wrong in counts]
        print(f"| {net} | " + " | ".join(cells) + " |")


def print_dice(title: str, rows: dict[str, list[list[float]]], names: list[str]) -> None:
    """A table of mean Dice per foreground class, one row per network (``rows``: name -> per case, per class)."""
    print(f"\n{title}, Dice per class (means):")
    print("| | " + " | ".join(names[1:]) + " |\n|---|" + "---|" * (len(names) - 1))
    for row, values in rows.items():
        print(f"| {row} | " + " | ".join(f"{v:.2f}" for v in np.nanmean(values, 0)) + " |")


if __name__ == "__main__":
    main()
