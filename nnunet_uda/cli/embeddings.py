"""nnUNetv2_uda_embeddings: a t-SNE plot of a trained model's organ feature patches per domain.

Example::

    nnUNetv2_uda_embeddings -d 960 -tr nnUNetTrainerAICL -f 0 -o aicl_embeddings.png

Samples PGPS organ cuboids (as AICL training does) on preprocessed cases of every domain and writes
the plot of AICL's Fig. 5 (colour: organ, marker: domain), with the organ silhouette score; see
:mod:`nnunet_uda.embeddings`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_uda.embeddings import collect_organ_embeddings, organ_silhouette, plot_embeddings
from nnunet_uda.planning import DEFAULT_PLANS


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="nnUNetv2_uda_embeddings", description=__doc__.splitlines()[0])
    parser.add_argument("-d", required=True, help="dataset id or name")
    parser.add_argument("-tr", default="nnUNetTrainerAICL", help="trainer (default: %(default)s)")
    parser.add_argument("-p", default=DEFAULT_PLANS, help="plans identifier (default: %(default)s)")
    parser.add_argument("-c", default="3d_fullres", help="configuration (default: %(default)s)")
    parser.add_argument("-f", type=int, default=0, help="fold (default: %(default)s)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file (default: %(default)s)")
    parser.add_argument("-n", type=int, default=10, help="cases per domain (default: %(default)s)")
    parser.add_argument("-o", default=None, help="PNG to write (default: <model folder>/fold_F/organ_embeddings.png)")
    args = parser.parse_args(argv)

    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    dataset = maybe_convert_to_dataset_name(args.d)
    model = Path(nnUNet_results) / dataset / f"{args.tr}__{args.p}__{args.c}"
    if not (model / f"fold_{args.f}" / args.chk).is_file():
        raise SystemExit(f"nnUNetv2_uda_embeddings: no {args.chk} in {model / f'fold_{args.f}'}; train fold {args.f} "
                         f"of {args.tr} first or pick -f/-chk")
    try:
        embeddings = collect_organ_embeddings(model, Path(nnUNet_preprocessed) / dataset, args.f, args.n,
                                              checkpoint=args.chk)
    except ValueError as error:
        raise SystemExit(f"nnUNetv2_uda_embeddings: {error}") from None
    output = Path(args.o) if args.o else model / f"fold_{args.f}" / "organ_embeddings.png"
    plot_embeddings(embeddings, output, f"{dataset} {args.tr} fold {args.f}")
    print(f"{len(embeddings.vectors)} organ patches from {len(set(embeddings.cases))} cases; organ silhouette "
          f"{organ_silhouette(embeddings):.3f}; plot: {output}")


if __name__ == "__main__":
    main()
