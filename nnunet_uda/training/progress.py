"""nnU-Net's local logger, extended with per-epoch scalars of the plugin trainers."""
from __future__ import annotations

import math
from os.path import join

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

NNUNET_KEYS = ("mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region", "train_losses", "val_losses", "lrs",
               "epoch_start_timestamps", "epoch_end_timestamps")


class ExtendedLocalLogger(LocalLogger):
    """Keeps nnU-Net's keys and adds any scalar a trainer registers (one value per epoch).

    The values travel in nnU-Net's checkpoint with the rest of the log (``logging``), so ``--c``
    restores them. ``progress.png`` gets a fourth panel with the extra curves.
    """

    def register(self, key: str, epoch: int) -> None:
        """Add ``key``, padded with NaN for the epochs before it was first logged."""
        if key not in self.my_fantastic_logging:
            self.my_fantastic_logging[key] = [math.nan] * epoch

    @property
    def extra_keys(self) -> list[str]:
        return [k for k in self.my_fantastic_logging if k not in NNUNET_KEYS]

    def plot_progress_png(self, output_folder):
        log = self.my_fantastic_logging
        epochs = min(len(log[k]) for k in NNUNET_KEYS)
        x = list(range(epochs))
        fig, axes = plt.subplots(4, 1, figsize=(12, 20))
        ax = axes[0]
        ax.plot(x, log["train_losses"][:epochs], "b-", label="loss_tr")
        ax.plot(x, log["val_losses"][:epochs], "r-", label="loss_val")
        ax.set(xlabel="epoch", ylabel="loss")
        twin = ax.twinx()
        twin.plot(x, log["mean_fg_dice"][:epochs], "g:", label="pseudo dice")
        twin.plot(x, log["ema_fg_dice"][:epochs], "g-", label="pseudo dice (mov. avg.)")
        twin.set_ylabel("pseudo dice")
        ax.legend(loc="upper left")
        twin.legend(loc="upper right")
        durations = [e - s for s, e in zip(log["epoch_start_timestamps"][:epochs], log["epoch_end_timestamps"][:epochs])]
        axes[1].plot(x, durations, "b-", label="epoch duration")
        axes[1].set(xlabel="epoch", ylabel="time [s]", ylim=(0, None))
        axes[2].plot(x, log["lrs"][:epochs], "b-", label="learning rate")
        axes[2].set(xlabel="epoch", ylabel="learning rate")
        for key in self.extra_keys:
            axes[3].plot(x, log[key][:epochs], label=key)
        axes[3].set(xlabel="epoch", ylabel="value", title="trainer scalars")
        for ax in axes[1:]:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="upper left")
        fig.tight_layout()
        fig.savefig(join(output_folder, "progress.png"))
        plt.close(fig)
