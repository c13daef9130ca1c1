"""How AICL's terms compare on real nnU-Net training batches: loss values, gradient norms, and l_csc
at the labels themselves.

For a preprocessed AICL dataset and a trained model of the same plans (e.g. the pseudo-label-only
``nnUNetTrainerUDA`` of ``examples/benchmark_aicl.py``; ``--weights_of none``: the initial weights),
on batches from ``nnUNetTrainerAICL``'s own loader (twin batches on paired data, else mixed
domains with batch mirroring):

1. each term of eq. 6 (l_sup, l_supUL, l_csc with and without the trainer's anchors
   (``csc_anchors``), l_fpc) and the norm of its gradient over the network's parameters, at the
   trained weights;
2. l_csc of the one-hot labels (hand-drawn and initial pseudo labels) as if they were the
   prediction, against its value for uniform maps: where the labels score higher, eq. 5 rewards
   moving predictions away from the anatomy; and for the labels with the target samples' organs
   at a fifth of their amplitude (a faint copy, every argmax lost to the background): where it
   scores as the labels do, l_csc does not hold the target's amplitude.

Both for eq. 5 as printed and for its InfoNCE form at each ``--csc_temperatures`` value, with the
cosine as phi, and with the soft Dice (``nnUNetTrainerAICL``'s phi) at ``--dice_temperatures``.

    python examples/aicl_loss_scales.py --work benchmark_output/aicl -d 970 --weights_of nnUNetTrainerUDA

It trains nothing, but nnU-Net's trainer set-up writes a training log into the results folder of
``nnUNetTrainerAICL`` fold 0.
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from nnunet_uda.losses.patch_contrast import patch_contrastive_loss
from nnunet_uda.losses.structural_consistency import contrast_classes, structural_consistency_loss
from nnunet_uda.pipeline import nnunet_environment
from nnunet_uda.planning import DEFAULT_PLANS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="benchmark_output/aicl", help="the benchmark's working folder")
    parser.add_argument("-d", default="970", help="dataset id")
    parser.add_argument("--weights_of", default="nnUNetTrainerUDA",
                        help="trainer whose fold-0 final weights to use; 'none': the initial weights")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--csc_temperatures", type=float, nargs="*", default=[0.1, 0.5, 1.0],
                        help="l_csc's InfoNCE temperatures to measure besides eq. 5 as printed")
    parser.add_argument("--dice_temperatures", type=float, nargs="*", default=[0.1],
                        help="InfoNCE temperatures of l_csc with the soft Dice as phi")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    work = Path(args.work).resolve()
    env = nnunet_environment(work, processes=1)
    os.environ.update(env)  # nnU-Net reads its folders from the environment of this process
    from nnunetv2.run.run_training import get_trainer_from_args

    trainer = get_trainer_from_args(args.d, "3d_fullres", 0, "nnUNetTrainerAICL", DEFAULT_PLANS,
                                    device=torch.device("cpu"))
    trainer.initialize()
    if args.weights_of != "none":
        weights = (Path(trainer.output_folder).parents[1] / f"{args.weights_of}__{DEFAULT_PLANS}__3d_fullres"
                   / "fold_0" / "checkpoint_final.pth")
        trainer.network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=False)["network_weights"])
    loader, _ = trainer.get_dataloaders()
    pairs = trainer.batch_twin_pairs(trainer.batch_size)
    print(f"{'twin batches' if pairs is not None else 'mixed batches of different subjects'}")
    parameters = list(trainer.network.parameters())
    forms = {"eq. 5 as printed": (None, "cosine"), **{f"tau {t:g}": (t, "cosine") for t in args.csc_temperatures},
             **{f"soft Dice phi, tau {t:g}": (t, "dice") for t in args.dice_temperatures}}
    values, norms, at_labels, at_uniform, at_faint = {}, {}, {}, {}, {}
    n_classes = trainer.label_manager.num_segmentation_heads
    for _ in range(args.batches):
        batch = next(loader)
        data, target = trainer._to_device(batch)
        keys = batch["keys"]
        domains = trainer.batch_domains(keys)
        output = trainer.forward(data, domains, return_features=True)
        probs = torch.softmax(output.logits[0].float(), 1)
        shown = contrast_classes(target[0], trainer.batch_annotations(keys), probs.detach())
        patches = trainer.patch_sampler(output.encoder[trainer.contrast_stage], probs)
        supervised = {source: trainer.supervised_loss(output.logits, target, trainer.batch_annotations(keys, source))
                      for source in ("ground_truth", "pseudo")}
        maps = trainer.csc_maps(probs, trainer.batch_annotations(keys, "ground_truth"), domains)
        terms = {"l_sup": supervised["ground_truth"], "l_supUL": supervised["pseudo"],
                 "l_csc, both sides free": structural_consistency_loss(probs, domains, shown, pairs=pairs),
                 **{f"l_csc, anchored, {name}": structural_consistency_loss(maps, domains, shown, t, pairs, phi)
                    for name, (t, phi) in forms.items()},
                 "l_fpc": patch_contrastive_loss(patches.embeddings, patches.present, trainer.temperature)}
        for name, value in terms.items():
            grads = torch.autograd.grad(value, parameters, retain_graph=True, allow_unused=True)
            norms.setdefault(name, []).append(float(torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None))))
            values.setdefault(name, []).append(float(value))
        labels = target[0][:, 0].long().clamp(max=n_classes)  # the ignore label becomes an extra, dropped column
        onehot = F.one_hot(labels, n_classes + 1)[..., :n_classes].movedim(-1, 1).float()
        uniform = torch.full_like(onehot, 1 / n_classes)
        faint, target = onehot.clone(), ~trainer.batch_is_source(domains)
        faint[target, 1:] *= 0.2  # the organs' lost fifths go to the background
        faint[target, 0] += 0.8 * onehot[target, 1:].sum(1)
        for name, (t, phi) in forms.items():
            for store, maps in ((at_labels, onehot), (at_uniform, uniform), (at_faint, faint)):
                store.setdefault(name, []).append(float(structural_consistency_loss(maps, domains, shown, t, pairs,
                                                                                    phi)))
    print(f"\nAt the weights of {args.weights_of}, {args.batches} training batches (median gradient norm):")
    for name in values:
        print(f"  {name}: loss {statistics.mean(values[name]):.3f}, gradient norm {statistics.median(norms[name]):.3f}")
    print("l_csc of the one-hot labels against uniform maps and a faint target copy (mean over batches; labels "
          "below uniform: the anatomy is the better minimiser; faint copy at the labels' value: amplitude is free):")
    for name in forms:
        print(f"  {name}: labels {statistics.mean(at_labels[name]):.3f}, "
              f"uniform {statistics.mean(at_uniform[name]):.3f}, faint target copy {statistics.mean(at_faint[name]):.3f}")


if __name__ == "__main__":
    main()
