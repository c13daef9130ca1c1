"""Training the organ-attention CycleGAN: epochs of iterations with a progress bar, a checkpoint
after every epoch (resumed where it stopped), a preview PNG per epoch and a loss curve.

The paper's schedule (section 3.2) is the default: 100 epochs of 2,400 iterations, batch size 2.
Its learning rate stays constant (the paper names no decay). Files in ``output``:
``checkpoint_latest.pth`` (weights, optimisers, history pools, RNG, loss history; written to a
temporary file and renamed, so an interruption never leaves a broken one; a resumed run may raise
the number of epochs, nothing else), ``generator_final.pth``
(the source-to-target generator and its settings, what translation needs), ``preview_epoch_XXX.png``
(source, translated, cycled back, attention, label overlay on the translation) and ``losses.png``.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from nnunet_uda.gan.cyclegan import OrganAttentionCycleGAN  # noqa: E402
from nnunet_uda.gan.slices import UnpairedSlices  # noqa: E402

LATEST, FINAL = "checkpoint_latest.pth", "generator_final.pth"


@dataclass
class CycleGANSettings:
    epochs: int = 100
    iterations: int = 2400
    batch_size: int = 2
    attention: bool = True
    width: int = 64
    n_blocks: int = 9
    discriminator_layers: int = 3
    seed: int = 0

    def build(self) -> OrganAttentionCycleGAN:
        return OrganAttentionCycleGAN(attention=self.attention, width=self.width, n_blocks=self.n_blocks,
                                      discriminator_layers=self.discriminator_layers)


def save_atomically(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train_cyclegan(data: UnpairedSlices, settings: CycleGANSettings, output: Path, device: str = "cpu",
                   preview_labels: torch.Tensor | None = None) -> list[dict[str, float]]:
    """Train (or resume from ``output/checkpoint_latest.pth``) and return the per-epoch mean losses.
    ``preview_labels`` (N_source, 1, H, W): label slices of the source, drawn on the previews."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    model = settings.build().to(device)
    generator = torch.Generator().manual_seed(settings.seed)
    history: list[dict[str, float]] = []
    if (output / LATEST).is_file():
        state = torch.load(output / LATEST, map_location=device, weights_only=False)
        changed = {k: (v, state["settings"][k]) for k, v in asdict(settings).items()
                   if k != "epochs" and v != state["settings"][k]}
        if changed:
            raise ValueError(f"{output / LATEST} was written with other settings (now, then: {changed}); use the "
                             f"same options to resume (only the number of epochs may grow), or another output folder")
        model.load_training_state(state["training"])
        generator.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        history = state["history"]
    preview = torch.linspace(0, len(data.source) - 1, 4).long()
    for epoch in range(len(history), settings.epochs):
        sums: dict[str, float] = {}
        for _ in tqdm(range(settings.iterations), desc=f"CycleGAN epoch {epoch + 1}/{settings.epochs}",
                      leave=False):
            source, target, attention = (None if x is None else x.to(device)
                                         for x in data.batch(settings.batch_size, generator))
            for name, value in model.train_step(source, target, attention).items():
                sums[name] = sums.get(name, 0.0) + value
        history.append({name: value / settings.iterations for name, value in sums.items()})
        save_atomically({"settings": asdict(settings), "training": model.training_state(), "rng": generator.get_state(),
                         "torch_rng": torch.get_rng_state(), "history": history}, output / LATEST)
        write_preview(model, data, preview, preview_labels, output / f"preview_epoch_{epoch + 1:03d}.png", device)
        plot_losses(history, output / "losses.png")
        print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in history[-1].items()))
    save_atomically({"settings": asdict(settings), "generator": model.g_target.state_dict()}, output / FINAL)
    return history


def load_generator(path: Path, device: str = "cpu") -> torch.nn.Module:
    """The source-to-target generator of ``generator_final.pth``, in eval mode; its ``input_normalization`` says
    what images it takes: "harmonized" (the CycleGAN's, [-1, 1]) or "zscore" (CISFA's, nnU-Net's normalisation)."""
    state = torch.load(path, map_location=device, weights_only=False)
    generator = CycleGANSettings(**state["settings"]).build().g_target
    generator.load_state_dict(state["generator"])
    generator.input_normalization = state.get("input", "harmonized")
    return generator.to(device).eval()


@torch.no_grad()
def write_preview(model: OrganAttentionCycleGAN, data: UnpairedSlices, indices: torch.Tensor,
                  labels: torch.Tensor | None, path: Path, device: str) -> None:
    """Rows of source slices: source, translated, cycled back, attention, labels over the translation."""
    model.eval()
    source = data.source[indices].to(device)
    translated = model.g_target(source)
    cycled = model.g_source(translated)
    model.train()
    columns = [("source", source), ("translated", translated), ("cycled back", cycled)]
    if data.attention is not None:
        columns.append(("attention A", data.attention[indices]))
    fig, axes = plt.subplots(len(indices), len(columns) + 1, figsize=(2.2 * (len(columns) + 1), 2.2 * len(indices)),
                             squeeze=False)
    for row, index in enumerate(indices):
        for col, (title, images) in enumerate(columns):
            axes[row, col].imshow(images[row, 0].cpu().numpy(), cmap="gray", vmin=-1 if col < 3 else 0, vmax=1)
            axes[row, col].set_title(title if row == 0 else "", fontsize=8)
        axes[row, -1].imshow(translated[row, 0].cpu().numpy(), cmap="gray", vmin=-1, vmax=1)
        if labels is not None:
            label = labels[index, 0].cpu().numpy()
            axes[row, -1].imshow(np.ma.masked_equal(label, 0), cmap="tab10", alpha=0.5, interpolation="nearest")
        axes[row, -1].set_title("labels on translation" if row == 0 else "", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_losses(history: list[dict[str, float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = np.arange(1, len(history) + 1)
    for name in history[0]:
        ax.plot(epochs, [h[name] for h in history], label=name)
    ax.set(xlabel="epoch", ylabel="mean loss", yscale="log")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
