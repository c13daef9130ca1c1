"""Organ feature-patch embeddings of a trained model, as in AICL's Fig. 5 (t-SNE).

A trained domain-conditioned model is loaded from its nnU-Net results folder; for up to ``n``
preprocessed cases of every domain, the central patch (the configuration's patch size) goes
through the network with the case's own domain, PGPS samples each organ's feature cuboid at the
contrast stage guided by the network's own soft prediction (exactly as during AICL training), and
every cuboid becomes one point. t-SNE maps the points (cosine distances) to 2D: colour is the
organ, marker the domain. The silhouette score of the organ grouping (cosine, on the embeddings
themselves) quantifies what the plot shows: higher means tighter, better separated organ
clusters across domains.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nnunet_uda.domains import DomainTable
from nnunet_uda.nn.organ_patches import OrganPatchSampler
from nnunet_uda.organ_extents import contrast_stage, pgps_patch_size

MARKERS = "o^sDvP*X"


@dataclass
class OrganEmbeddings:
    vectors: np.ndarray  # (N, D)
    organs: list[str]
    domains: list[str]
    cases: list[str]


def load_trained_network(model_folder: Path, fold: int, checkpoint: str = "checkpoint_final.pth"):
    """(network in eval mode with the fold's weights, plans manager, configuration manager, dataset.json)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from nnunet_uda.cli.trainer_path import trainer_path

    os.environ.setdefault("nnUNet_extTrainer", trainer_path())
    predictor = nnUNetPredictor(device=torch.device("cpu"), verbose=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), (fold,), checkpoint)
    network = predictor.network
    network.load_state_dict(predictor.list_of_parameters[0])
    return network.eval(), predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json


def central_patch(data: np.ndarray, patch_size) -> np.ndarray:
    """The centred ``patch_size`` crop of (C, *s) ``data``, zero-padded where the case is smaller."""
    out = np.zeros((data.shape[0], *patch_size), dtype=np.float32)
    src, dst = [], []
    for n, p in zip(data.shape[1:], patch_size):
        start = max((n - p) // 2, 0)
        offset = max((p - n) // 2, 0)
        length = min(n, p)
        src.append(slice(start, start + length))
        dst.append(slice(offset, offset + length))
    out[(slice(None), *dst)] = data[(slice(None), *src)]
    return out


def collect_organ_embeddings(model_folder: Path, preprocessed_folder: Path, fold: int = 0, cases_per_domain: int = 10,
                             patch_size=None, checkpoint: str = "checkpoint_final.pth") -> OrganEmbeddings:
    """PGPS organ cuboids of up to ``cases_per_domain`` preprocessed training cases per domain.
    ``model_folder`` is nnU-Net's ``<trainer>__<plans>__<configuration>`` results folder."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    network, plans_manager, configuration, dataset_json = load_trained_network(model_folder, fold, checkpoint)
    if not hasattr(network, "domain_names"):
        raise ValueError(f"{model_folder} holds a network without domain conditioning; embeddings per domain need a "
                         f"domain-conditioned nnunet_uda trainer (e.g. nnUNetTrainerAICL)")
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


def plot_embeddings(embeddings: OrganEmbeddings, path: Path, title: str, seed: int = 0) -> np.ndarray:
    """t-SNE (cosine) of the organ patches: colour by organ, marker by domain. Returns the 2D points."""
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    n = len(embeddings.vectors)
    points = TSNE(2, metric="cosine", init="random", perplexity=float(min(30, max(2, (n - 1) // 3))),
                  random_state=seed).fit_transform(embeddings.vectors)
    organs, domains = sorted(set(embeddings.organs)), sorted(set(embeddings.domains))
    figure = Figure(figsize=(6.5, 5.5))
    ax = figure.add_subplot(1, 1, 1)
    colours = {o: f"C{i % 10}" for i, o in enumerate(organs)}
    for d, domain in enumerate(domains):
        for organ in organs:
            chosen = [i for i in range(n) if embeddings.domains[i] == domain and embeddings.organs[i] == organ]
            if chosen:
                ax.scatter(points[chosen, 0], points[chosen, 1], c=colours[organ], marker=MARKERS[d % len(MARKERS)],
                           s=28, alpha=0.8, edgecolors="none", label=f"{organ} ({domain})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=6, ncol=len(domains), loc="best", markerscale=0.8)
    ax.set_title(f"{title}\norgan silhouette (cosine) {organ_silhouette(embeddings):.3f}, {n} patches", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return points
