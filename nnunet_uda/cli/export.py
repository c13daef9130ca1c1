"""nnUNetv2_uda_export: a trained plugin model as a plain nnU-Net model, which nnUNetv2_predict runs without the plugin.

Examples::

    nnUNetv2_uda_export -d 500 -tr nnUNetTrainerAICL -o exported_results
    nnUNetv2_uda_export -d 500 -tr nnUNetTrainerAICL -f 0 1 -domain T2 -o exported_results_T2
    nnUNet_results=exported_results nnUNetv2_predict -i IMAGES -o PRED -d 500 -c 3d_fullres -f 0 1 \\
        -tr nnUNetTrainer -p nnUNetResEncUNetMPlans

The model is read from ``nnUNet_results``; the export goes to ``OUTPUT/<dataset>/nnUNetTrainer__<plans>__<conf>``.
See :mod:`nnunet_uda.export`.
"""
from __future__ import annotations

import argparse
import os
import shlex
from typing import Sequence

from nnunet_uda.export import CHECKPOINTS, PLAIN_TRAINER, ExportError, export_plain_model, resolve_dataset
from nnunet_uda.nn.network import INFERENCE_DOMAIN_ENV
from nnunet_uda.planning import DEFAULT_PLANS

PROG = "nnUNetv2_uda_export"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Export a trained model to plain nnU-Net: the chosen domain's conditional-norm "
                               "parameters folded into nnU-Net's instance norms, trainer nnUNetTrainer, every fold. "
                               "nnUNetv2_predict runs the export without nnunet_uda installed.")
    parser.add_argument("-d", required=True, help="dataset id or name the model was trained on")
    parser.add_argument("-tr", required=True, help="trainer of the model, e.g. nnUNetTrainerAICL")
    parser.add_argument("-p", default=DEFAULT_PLANS, help=f"plans identifier (default {DEFAULT_PLANS})")
    parser.add_argument("-c", default="3d_fullres", help="configuration (default 3d_fullres)")
    parser.add_argument("-f", nargs="+", default=None, help="folds to export (default: every trained fold)")
    parser.add_argument("-chk", nargs="+", default=None,
                        help=f"checkpoints of each fold (default: {' and '.join(CHECKPOINTS)}, those present)")
    parser.add_argument("-domain", default=None,
                        help="the domain whose norms are folded (default: the one stored with the weights, which "
                             f"nnUNetv2_predict uses when {INFERENCE_DOMAIN_ENV} is not set)")
    parser.add_argument("-o", required=True,
                        help="output root, laid out as nnUNet_results (OUTPUT/DatasetXXX_NAME/"
                             f"{PLAIN_TRAINER}__PLANS__CONFIGURATION)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing exported model folder")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        plan, folder = export_plain_model(os.environ.get("nnUNet_results"), resolve_dataset(args.d), args.tr, args.p,
                                          args.c, args.o, args.f, args.chk, args.domain, args.overwrite)
    except ExportError as error:
        raise SystemExit(f"{PROG}: {error}") from None
    override = os.environ.get(INFERENCE_DOMAIN_ENV)
    if plan.domain is not None and args.domain is None and override and override != plan.domain:
        print(f"note: {INFERENCE_DOMAIN_ENV}={override} is set, but the export folds the stored domain "
              f"{plan.domain}; pass -domain {override} to fold that one")
    folds = list(plan.checkpoints)
    dataset_id = str(int(plan.dataset[len("Dataset"):].split("_", 1)[0]))
    predict = ["nnUNetv2_predict", "-i", "IMAGES", "-o", "PREDICTIONS", "-d", dataset_id, "-c", plan.configuration,
               "-f", *folds, "-tr", PLAIN_TRAINER, "-p", plan.plans_identifier]
    if not all(CHECKPOINTS[0] in names for names in plan.checkpoints.values()):
        predict += ["-chk", next(iter(plan.checkpoints.values()))[0]]
    norms = "no conditional norms" if plan.domain is None else f"the norms of domain {plan.domain}"
    print(f"{plan.dataset}/{plan.source.name} ({'fold' if len(folds) == 1 else 'folds'} {' '.join(folds)}, "
          f"{norms}) exported to {folder}\n"
          f"predict with: nnUNet_results={shlex.quote(str(args.o))} {shlex.join(predict)}")


if __name__ == "__main__":
    main()
