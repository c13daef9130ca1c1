"""nnUNetv2_uda_embeddings: a t-SNE plot of a trained model's features, organ patches per domain or voxels per class.

Example::

    nnUNetv2_uda_embeddings -d 960 -tr nnUNetTrainerAICL -f 0 -o aicl_embeddings.png
    nnUNetv2_uda_embeddings -d 954 -tr nnUNetTrainerDVCL -f 0

The mode follows the checkpoint. A domain-conditioned model (AICL): PGPS organ cuboids (as AICL training
samples them) on preprocessed cases of every domain, the plot of AICL's Fig. 5 (colour: organ, marker:
domain) with the organ silhouette score. A co-training model with a projection head (DVCL, DACL): network A's
projected voxel features of the test cases per class, the plot of DACL's Fig. 1b with silhouette,
Davies-Bouldin and V-measure, also written as JSON beside the PNG. See :mod:`nnunet_uda.embeddings`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nnunet_uda.embeddings import (collect_organ_embeddings, collect_voxel_embeddings, cluster_scores, format_scores,
                                   load_projection_head, organ_silhouette, plot_embeddings, write_scores)
from nnunet_uda.planning import DEFAULT_PLANS


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="nnUNetv2_uda_embeddings", description=__doc__.splitlines()[0])
    parser.add_argument("-d", required=True, help="dataset id or name")
    parser.add_argument("-tr", default="nnUNetTrainerAICL", help="trainer (default: %(default)s)")
    parser.add_argument("-p", default=DEFAULT_PLANS, help="plans identifier (default: %(default)s)")
    parser.add_argument("-c", default="3d_fullres", help="configuration (default: %(default)s)")
    parser.add_argument("-f", type=lambda f: int(f) if f.isdigit() else f, default=0,
                        help="fold, a number or all (default: %(default)s)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file (default: %(default)s)")
    parser.add_argument("-n", type=int, default=10,
                        help="cases per domain (organ patches) or cases (voxel features) (default: %(default)s)")
    parser.add_argument("-v", type=int, default=200,
                        help="voxel features: voxels per class and case (default: %(default)s)")
    parser.add_argument("-i", default=None, help="voxel features: folder of images (default: the dataset's imagesTs)")
    parser.add_argument("-l", default=None, help="voxel features: folder of reference labels (default: labelsTs)")
    parser.add_argument("-o", default=None, help="PNG to write (default: <model folder>/fold_F/organ_embeddings.png, "
                                                 "or feature_embeddings.png for voxel features)")
    args = parser.parse_args(argv)

    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw, nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    dataset = maybe_convert_to_dataset_name(args.d)
    model = Path(nnUNet_results) / dataset / f"{args.tr}__{args.p}__{args.c}"
    if not (model / f"fold_{args.f}" / args.chk).is_file():
        raise SystemExit(f"nnUNetv2_uda_embeddings: no {args.chk} in {model / f'fold_{args.f}'}; train fold {args.f} "
                         f"of {args.tr} first or pick -f/-chk")
    title = f"{dataset} {args.tr} fold {args.f}"
    head = load_projection_head(model, args.f, args.chk)
    try:
        if head is None:
            draw_organs(args, model, Path(nnUNet_preprocessed) / dataset, title)
        else:
            draw_voxels(args, model, Path(nnUNet_raw) / dataset, title, *head)
    except ValueError as error:
        raise SystemExit(f"nnUNetv2_uda_embeddings: {error}") from None


def draw_organs(args, model: Path, preprocessed: Path, title: str) -> None:
    """Organ patches per domain: the plot and the organ silhouette."""
    embeddings = collect_organ_embeddings(model, preprocessed, args.f, args.n, checkpoint=args.chk)
    output = Path(args.o) if args.o else model / f"fold_{args.f}" / "organ_embeddings.png"
    silhouette = organ_silhouette(embeddings)
    plot_embeddings(embeddings.vectors, embeddings.organs, output, f"{title}\norgan silhouette (cosine) "
                    f"{silhouette:.3f}, {len(embeddings.vectors)} patches", embeddings.domains)
    print(f"{len(embeddings.vectors)} organ patches from {len(set(embeddings.cases))} cases; organ silhouette "
          f"{silhouette:.3f}; plot: {output}")


def draw_voxels(args, model: Path, raw: Path, title: str, head, feature_stage: int) -> None:
    """Voxel features per class: the plot, the scores and their JSON."""
    embeddings = collect_voxel_embeddings(model, Path(args.i or raw / "imagesTs"), Path(args.l or raw / "labelsTs"),
                                          head, feature_stage, args.f, args.n, args.v, args.chk)
    output = Path(args.o) if args.o else model / f"fold_{args.f}" / "feature_embeddings.png"
    scores, cases = cluster_scores(embeddings.vectors, embeddings.classes), len(set(embeddings.cases))
    plot_embeddings(embeddings.vectors, embeddings.classes, output,
                    f"{title}\n{format_scores(scores)}; {len(embeddings.vectors)} voxels of {cases} cases")
    write_scores(output.with_suffix(".json"), embeddings, scores)
    print(f"{len(embeddings.vectors)} voxels from {cases} cases; {format_scores(scores)}; plot: {output}; "
          f"scores: {output.with_suffix('.json')}")


if __name__ == "__main__":
    main()
