"""``nnUNetv2_uda_semisupervised`` and ``nnUNetv2_uda_add_unlabeled``: semi-supervised raw datasets
(see nnunet_uda.data.semi_supervised and docs/datasets.md, section "Semi-supervised datasets")."""
from __future__ import annotations

import argparse

from nnunet_uda.data.semi_supervised import (SPLIT_FILE, SemiSupervisedDatasetError, add_unlabeled_cases,
                                             make_semi_supervised_dataset, read_split)


def build_semisupervised_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_uda_semisupervised",
        description="Write a semi-supervised copy of a fully labeled nnU-Net raw dataset: a seeded random choice of "
                    "training cases keeps its labels, the others get label maps of the ignore label (true labels "
                    "kept in labelsTr_reference), with a one-domain domain table.")
    parser.add_argument("-d", dest="source", required=True, help="id (or name) of the fully labeled dataset")
    parser.add_argument("-o", dest="dataset_id", type=int, required=True, help="id of the new dataset")
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--labeled", type=float, metavar="FRACTION",
                        help="fraction of training cases that keep their labels, in (0, 1); rounded, at least 1 "
                             "case and at most all but one")
    amount.add_argument("--n_labeled", type=int, metavar="N", help="number of training cases that keep their labels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the choice (default: %(default)s)")
    parser.add_argument("--name", help="name of the new dataset (default: <source name>Semi<percent labeled>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset of this id and name")
    return parser


def main(argv: list[str] | None = None) -> None:
    """``nnUNetv2_uda_semisupervised``."""
    args = build_semisupervised_parser().parse_args(argv)
    try:
        path = make_semi_supervised_dataset(args.source, args.dataset_id, fraction=args.labeled,
                                            n_labeled=args.n_labeled, seed=args.seed, name=args.name,
                                            overwrite=args.overwrite, progress=True)
    except SemiSupervisedDatasetError as error:
        raise SystemExit(f"nnUNetv2_uda_semisupervised: {error}") from None
    split = read_split(path)
    print(f"{path}: {split['n_labeled']} labeled, {split['n_unlabeled']} unlabeled training cases "
          f"(the split is in {SPLIT_FILE})")


def build_add_unlabeled_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_uda_add_unlabeled",
        description="Add a folder of single-channel images (X_0000<ending> or X<ending>) to a raw dataset as "
                    "unlabeled training cases <prefix>X: image, label map of the ignore label, domain-table entry.")
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id (or name)")
    parser.add_argument("-i", dest="folder", required=True, help="folder of unlabeled images")
    parser.add_argument("--domain", help="domain of the new cases (default: the dataset's only domain, else its only "
                                         "target domain)")
    harmonise = parser.add_mutually_exclusive_group()
    harmonise.add_argument("--harmonize", dest="harmonize", action="store_const", const=True,
                           help="harmonise the images by the domain's modality (default: when the domain table says "
                                "the dataset's images are harmonised)")
    harmonise.add_argument("--no_harmonize", dest="harmonize", action="store_const", const=False,
                           help="copy the images as they are (e.g. harmonised already)")
    parser.add_argument("--prefix", default="unl_", help="prefix of the new case names (default: %(default)s)")
    return parser


def add_unlabeled_main(argv: list[str] | None = None) -> None:
    """``nnUNetv2_uda_add_unlabeled``."""
    args = build_add_unlabeled_parser().parse_args(argv)
    try:
        cases = add_unlabeled_cases(args.dataset, args.folder, domain=args.domain, harmonize=args.harmonize,
                                    prefix=args.prefix, progress=True)
    except SemiSupervisedDatasetError as error:
        raise SystemExit(f"nnUNetv2_uda_add_unlabeled: {error}") from None
    print(f"{len(cases)} unlabeled cases added to dataset {args.dataset}: {cases[0]} ... {cases[-1]}"
          if len(cases) > 1 else f"1 unlabeled case added to dataset {args.dataset}: {cases[0]}")


if __name__ == "__main__":
    main()
