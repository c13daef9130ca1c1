"""Feature embeddings of a trained model, t-SNE plots with cluster scores; two modes.

Organ patches, as in AICL's Fig. 5: a trained domain-conditioned model is loaded from its nnU-Net results
folder; for up to ``n`` preprocessed cases of every domain, the central patch (the configuration's patch size)
goes through the network with the case's own domain, PGPS samples each organ's feature cuboid at the
contrast stage guided by the network's own soft prediction (exactly as during AICL training), and every
cuboid becomes one point. t-SNE maps the points (cosine distances) to 2D: colour is the organ, marker the
domain. The silhouette score of the organ grouping (cosine, on the embeddings themselves) quantifies what the
plot shows: higher means tighter, better separated organ clusters across domains.

Voxel features, as in DACL's Fig. 1b: for a co-training model with a projection head (``uda_state["head_a"]``
in the checkpoint), up to ``n`` test cases (raw images with their reference labels) go through nnU-Net's own
preprocessing; the central patch goes through network A, its head embeds the decoder stage it was trained on
(the trainer's ``feature_stage``), and up to ``k`` voxels of every class (background included) of each case's
reference are drawn at random. The L2-normalised embeddings are coloured by class and scored against the
classes: silhouette (cosine), Davies-Bouldin, and the V-measure of a k-means clustering.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nnunet_uda.domains import DomainTable
from nnunet_uda.losses.sampling import sample_per_class
from nnunet_uda.nn.organ_patches import OrganPatchSampler
from nnunet_uda.nn.projection import ProjectionHead
from nnunet_uda.organ_extents import contrast_stage, pgps_patch_size

MARKERS = "o^sDvP*X"
SUPPORTED = ("domain-conditioned trainers (organ patches: nnUNetTrainerAICL and its variants) and co-training trainers "
             "with a projection head (voxel features: nnUNetTrainerDVCL, nnUNetTrainerDACL and their variants)")


@dataclass
class OrganEmbeddings:
    vectors: np.ndarray  # (N, D)
    organs: list[str]
    domains: list[str]
    cases: list[str]


@dataclass
class VoxelEmbeddings:
    vectors: np.ndarray  # (N, D), L2-normalised
    classes: list[str]
    cases: list[str]


def load_trained_network(model_folder: Path, fold: int | str, checkpoint: str = "checkpoint_final.pth"):
    """(network in eval mode with the fold's weights, plans manager, configuration manager, dataset.json)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_uda.cli.trainer_path import trainer_path

    os.environ.setdefault("nnUNet_extTrainer", trainer_path())
    predictor = nnUNetPredictor(device=torch.device("cpu"), verbose=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), (fold,), checkpoint)
    network = predictor.network
    network.load_state_dict(predictor.list_of_parameters[0])
    return network.eval(), predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json


def central_patch(data: np.ndarray, patch_size, fill: float = 0.0) -> np.ndarray:
    """The centred ``patch_size`` crop of (C, *s) ``data``, padded with ``fill`` where the case is smaller."""
    out = np.full((data.shape[0], *patch_size), fill, dtype=np.float32)
    src, dst = [], []
    for n, p in zip(data.shape[1:], patch_size):
        start = max((n - p) // 2, 0)
        offset = max((p - n) // 2, 0)
        length = min(n, p)
        src.append(slice(start, start + length))
        dst.append(slice(offset, offset + length))
    out[(slice(None), *dst)] = data[(slice(None), *src)]
    return out


def collect_organ_embeddings(model_folder: Path, preprocessed_folder: Path, fold: int | str = 0,
                             cases_per_domain: int = 10,
                             patch_size=None, checkpoint: str = "checkpoint_final.pth") -> OrganEmbeddings:
    """PGPS organ cuboids of up to ``cases_per_domain`` preprocessed training cases per domain.
    ``model_folder`` is nnU-Net's ``<trainer>__<plans>__<configuration>`` results folder."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    network, plans_manager, configuration, dataset_json = load_trained_network(model_folder, fold, checkpoint)
    if not hasattr(network, "domain_names"):
        raise ValueError(f"{Path(model_folder).name.split('__')[0]} ({model_folder}) has neither domain conditioning "
                         f"nor a projection head; embeddings are drawn for {SUPPORTED}")
    table = DomainTable.from_dataset_json(dataset_json)
    stage = contrast_stage(configuration.network_arch_init_kwargs["strides"])
    configuration_name = Path(model_folder).name.split("__")[-1]
    sampler = OrganPatchSampler(patch_size or pgps_patch_size(plans_manager.plans, configuration_name))
    folder = Path(preprocessed_folder) / configuration.data_identifier
    chosen = [c for d in table.domain_names for c in table.cases_of([d])[:cases_per_domain]]
    dataset = infer_dataset_class(str(folder))(str(folder), chosen)
    organ_names = list(table.label_names)
    vectors, organs, domains, cases = [], [], [], []
    with torch.no_grad():
        for case in tqdm(chosen, desc="organ embeddings", unit="case"):
            data = torch.from_numpy(central_patch(np.asarray(dataset.load_case(case)[0]), configuration.patch_size))
            domain = table.domain_of(case)
            out = network(data[None], torch.tensor([table.domain_index(domain)]), return_features=True)
            logits = out.logits[0] if isinstance(out.logits, list) else out.logits
            patches = sampler(out.encoder[stage], torch.softmax(logits, 1))
            for k in torch.nonzero(patches.present[0]).flatten().tolist():
                vectors.append(patches.embeddings[0, k].numpy())
                organs.append(organ_names[k])
                domains.append(domain)
                cases.append(case)
    if len(vectors) < 2:
        raise ValueError(f"the model predicted fewer than two organ patches on {len(chosen)} cases; train it longer")
    return OrganEmbeddings(np.stack(vectors), organs, domains, cases)


def organ_silhouette(embeddings: OrganEmbeddings) -> float:
    """Silhouette score of the organ grouping, cosine distance (nan with fewer than two organs)."""
    from sklearn.metrics import silhouette_score

    if len(set(embeddings.organs)) < 2:
        return float("nan")
    return float(silhouette_score(embeddings.vectors, embeddings.organs, metric="cosine"))


def load_projection_head(model_folder: Path, fold: int | str, checkpoint: str = "checkpoint_final.pth"):
    """(network A's projection head in eval mode, the decoder stage it reads) from a co-training checkpoint's
    ``uda_state["head_a"]``; None without a head. The stage is the trainer class's ``feature_stage`` (0 where
    the class is not found)."""
    from nnunet_uda.training import TRAINERS

    saved = torch.load(Path(model_folder) / f"fold_{fold}" / checkpoint, map_location="cpu", weights_only=False)
    state = saved.get("uda_state", {}).get("head_a")
    if state is None:
        return None
    head = ProjectionHead(state["layers.0.weight"].shape[1], state["layers.2.weight"].shape[0])
    head.load_state_dict(state)
    return head.eval(), getattr(TRAINERS.get(saved.get("trainer_name")), "feature_stage", 0)


def sample_class_voxels(seg: torch.Tensor, num_classes: int, k: int, generator: torch.Generator | None = None):
    """(positions, classes): up to ``k`` voxels of each class 0 .. C - 1 of ``seg``, drawn uniformly without
    replacement, as flat indices of ``seg`` with their class; other values (ignore, -1 outside the crop and
    the padding) are never drawn."""
    index, valid = sample_per_class(seg.flatten(), num_classes, k, generator)
    return index[valid], torch.arange(num_classes)[:, None].expand_as(index)[valid]


def collect_voxel_embeddings(model_folder: Path, images: Path, labels: Path, head: ProjectionHead, feature_stage: int,
                             fold: int | str = 0, cases: int = 10, voxels_per_class: int = 200,
                             checkpoint: str = "checkpoint_final.pth", seed: int = 0) -> VoxelEmbeddings:
    """Projected voxel features of the first ``cases`` images of ``images`` (``<case>_XXXX`` files) with a
    reference ``<case>`` in ``labels``, preprocessed as in training; up to ``voxels_per_class`` voxels of every
    class per case from the central patch."""
    network, plans_manager, configuration, dataset_json = load_trained_network(model_folder, fold, checkpoint)
    ending = dataset_json["file_ending"]
    names = {value: name for name, value in dataset_json["labels"].items() if name != "ignore"}
    chosen = sorted(path.name[:-len(ending) - 5] for path in Path(images).glob(f"*_0000{ending}"))
    chosen = [c for c in chosen if (Path(labels) / f"{c}{ending}").is_file()][:cases]
    if not chosen:
        raise ValueError(f"no image of {images} has a reference in {labels}")
    preprocessor = configuration.preprocessor_class(verbose=False)
    generator = torch.Generator().manual_seed(seed)
    vectors, classes, sources = [], [], []
    with torch.no_grad():
        for case in tqdm(chosen, desc="voxel embeddings", unit="case"):
            files = sorted(str(f) for f in Path(images).glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"))
            data, seg, _ = preprocessor.run_case(files, str(Path(labels) / f"{case}{ending}"), plans_manager,
                                                 configuration, dataset_json)
            data = torch.from_numpy(central_patch(data, configuration.patch_size))
            features = network(data[None], return_features=True).decoder[feature_stage][0]
            if features.shape[0] != head.layers[0].in_features:
                raise ValueError(f"decoder stage {feature_stage} has {features.shape[0]} channels, the projection "
                                 f"head reads {head.layers[0].in_features}")
            seg = torch.from_numpy(central_patch(seg, configuration.patch_size, fill=-1)).long()
            index, label = sample_class_voxels(seg, len(names), voxels_per_class, generator)
            vectors.append(F.normalize(head(features.flatten(1).T[index]), dim=1).numpy())
            classes += [names[c] for c in label.tolist()]
            sources += [case] * len(index)
    if len(set(classes)) < 2:
        raise ValueError(f"the central patches of {len(chosen)} cases hold fewer than two classes; take more cases")
    return VoxelEmbeddings(np.concatenate(vectors), classes, sources)


def cluster_scores(vectors: np.ndarray, classes, seed: int = 0) -> dict[str, float]:
    """How well ``vectors`` (N, D) cluster by ``classes`` (N,): silhouette (cosine; higher is better),
    Davies-Bouldin (lower is better) and the V-measure of k-means with k the number of classes (1 is perfect).
    NaN for fewer than two classes or as many classes as vectors."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import davies_bouldin_score, silhouette_score, v_measure_score

    k = len(set(classes))
    if not 2 <= k < len(vectors):
        return {"silhouette": math.nan, "davies_bouldin": math.nan, "v_measure": math.nan}
    clusters = KMeans(k, n_init=10, random_state=seed).fit_predict(vectors)
    return {"silhouette": float(silhouette_score(vectors, classes, metric="cosine")),
            "davies_bouldin": float(davies_bouldin_score(vectors, classes)),
            "v_measure": float(v_measure_score(classes, clusters))}


def format_scores(scores: dict[str, float]) -> str:
    """The three cluster scores in one line."""
    return (f"silhouette (cosine) {scores['silhouette']:.3f}, Davies-Bouldin {scores['davies_bouldin']:.3f}, "
            f"V-measure {scores['v_measure']:.3f}")


def write_atomically(path: Path, write) -> None:
    """``write(temporary path)`` beside ``path``, then renamed to ``path``: nothing half-written stays on error."""
    path = Path(path)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_scores(path: Path, embeddings: VoxelEmbeddings, scores: dict[str, float]) -> None:
    """The scores (null where undefined), the voxels per class and the number of cases as JSON."""
    summary = {**{name: value if math.isfinite(value) else None for name, value in scores.items()},
               "cases": len(set(embeddings.cases)),
               "voxels_per_class": dict(sorted(Counter(embeddings.classes).items()))}
    write_atomically(path, lambda partial: partial.write_text(json.dumps(summary, indent=2) + "\n"))


def plot_embeddings(vectors: np.ndarray, groups: list[str], path: Path, title: str, markers: list[str] | None = None,
                    seed: int = 0) -> np.ndarray:
    """t-SNE (cosine) of ``vectors``: colour by group, marker by ``markers`` (e.g. the domain) if given; the PNG
    is written atomically. Returns the 2D points."""
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    n = len(vectors)
    points = TSNE(2, metric="cosine", init="random", perplexity=float(min(30, max(2, (n - 1) // 3))),
                  random_state=seed).fit_transform(vectors)
    markers = markers or [""] * n
    names, kinds = sorted(set(groups)), sorted(set(markers))
    size = float(np.clip(8000 / n, 4, 28))  # smaller points for thousands of voxels
    figure = Figure(figsize=(6.5, 5.5))
    ax = figure.add_subplot(1, 1, 1)
    colours = {g: f"C{i % 10}" for i, g in enumerate(names)}
    for d, kind in enumerate(kinds):
        for name in names:
            chosen = [i for i in range(n) if markers[i] == kind and groups[i] == name]
            if chosen:
                ax.scatter(points[chosen, 0], points[chosen, 1], c=colours[name], marker=MARKERS[d % len(MARKERS)],
                           s=size, alpha=0.8, edgecolors="none",
                           label=f"{name} ({kind})" if kind else name)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=6, ncol=len(kinds), loc="best", markerscale=0.8 * math.sqrt(28 / size))
    ax.set_title(title, fontsize=9)
    figure.tight_layout()
    write_atomically(path, lambda partial: figure.savefig(partial, dpi=110))
    return points
