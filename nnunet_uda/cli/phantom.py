"""``nnUNetv2_uda_phantom``: write the synthetic cross-modality phantom benchmark to $nnUNet_raw."""
from __future__ import annotations

import argparse

from nnunet_uda.data.raw import raw_root
from nnunet_uda.synthetic.acquisition import DEFAULT_SHAPE
from nnunet_uda.synthetic.anatomy import ORGAN_SCALE_LIMITS, ORGANS, VARIATION_LIMITS
from nnunet_uda.synthetic.dataset import generate_phantom_dataset
from nnunet_uda.synthetic.options import PhantomOptionsError
from nnunet_uda.synthetic.pseudo_labels import PSEUDO_LABEL_PERTURBATIONS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_uda_phantom",
        description="Write a synthetic CT -> MR (T1, T2) multi-organ domain adaptation benchmark as an nnU-Net v2 "
                    "raw dataset $nnUNet_raw/DatasetXXX_NAME, deterministically from a seed.")
    parser.add_argument("-d", dest="dataset_id", type=int, required=True, help="dataset id (1-999)")
    parser.add_argument("--name", default="UDAPhantom", help="dataset name (default: %(default)s)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=list(DEFAULT_SHAPE),
                        help="CT grid size in voxels of 2 mm (default: %(default)s)")
    parser.add_argument("--n_source", type=int, default=16, help="CT training cases (default: %(default)s)")
    parser.add_argument("--n_target", type=int, default=16,
                        help="training cases per target domain T1 and T2 (default: %(default)s)")
    parser.add_argument("--n_test", type=int, default=5, help="test cases per domain (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--partial_labels", action="store_true",
                        help="AICL-style partial labels: CT annotates all organs but the gallbladder, the T1 "
                             "training cases only the gallbladder")
    parser.add_argument("--pseudo_labels", choices=sorted(PSEUDO_LABEL_PERTURBATIONS),
                        help="give unlabeled training cases (with --partial_labels: the unannotated classes "
                             "of every training case) registration-like initial pseudo labels (reg: shift + "
                             "warp; sreg: an extra 3-4 voxel translation)")
    parser.add_argument("--semi_supervised", type=float, metavar="FRACTION",
                        help="semi-supervised variant: CT only, this fraction of the training cases labeled")
    parser.add_argument("--fully_labeled", action="store_true",
                        help="fully labeled twin: target training cases carry their true labels (same images)")
    parser.add_argument("--paired", action="store_true",
                        help="paired modalities: target training case i shows the anatomy of CT training case i "
                             "(one subject per index, named in the domain table), as AICL's registered pairs")
    parser.add_argument("--organs", nargs="+", metavar="NAME", default=list(ORGANS),
                        help=f"the labeled organs, numbered 1..n in the order {', '.join(ORGANS)} (default: "
                             f"all); the others stay in the images but are background in every label file")
    parser.add_argument("--organ_scale", type=float, metavar="FACTOR", default=1.0,
                        help="multiply every organ's size by FACTOR ({}-{}; the body and spine unchanged), e.g. for "
                             "a short CPU demo (default: %(default)s)".format(*ORGAN_SCALE_LIMITS))
    parser.add_argument("--variation", type=float, metavar="FACTOR", default=1.0,
                        help="multiply the case-to-case variation of anatomy (organ sizes, positions, rotations, "
                             "elastic warp, body size) and of tissue contrast by FACTOR ({}-{}; 0: every case alike), "
                             "e.g. for a semi-supervised benchmark that a few labeled cases do not cover "
                             "(default: %(default)s)".format(*VARIATION_LIMITS))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of this id and name")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        path = generate_phantom_dataset(
            args.dataset_id, name=args.name, shape=tuple(args.shape), n_source=args.n_source,
            n_target=args.n_target, n_test=args.n_test, seed=args.seed, partial_labels=args.partial_labels,
            pseudo_labels=args.pseudo_labels, semi_supervised=args.semi_supervised,
            fully_labeled=args.fully_labeled, paired=args.paired, organs=args.organs, organ_scale=args.organ_scale,
            variation=args.variation,
            overwrite=args.overwrite, output_root=_output_root(), progress=True)
    except (PhantomOptionsError, FileExistsError) as error:
        raise SystemExit(f"nnUNetv2_uda_phantom: {error}") from None
    print(path)


def _output_root():
    try:
        return raw_root()
    except RuntimeError as error:
        raise SystemExit(f"nnUNetv2_uda_phantom: {error}") from None


if __name__ == "__main__":
    main()
