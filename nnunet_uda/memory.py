"""Memory of features across training steps: class-wise ring buffers and a feature queue.

- :class:`ClassMemoryBank`: one FIFO ring buffer per class, as DVCL's HqCL stores the anchor sets
  R_c and takes their centres (section 3.3, eq. 8).
- :class:`FeatureQueue`: one FIFO of (feature, probability vector) pairs, DVCL's candidate queue of
  unreliable voxels (section 3.4, after NNCLR).

Both store detached float32 copies and are filled in arrival order: the newest rows overwrite the
oldest. Under DDP, ``push`` first gathers the rows of every rank (:func:`~nnunet_uda.distributed.gather_rows`, in rank order),
so every rank holds the same buffers; every rank must then call ``push`` the same number of times
(a rank without rows pushes an empty tensor).
"""
from __future__ import annotations

import torch

from nnunet_uda.distributed import gather_rows


def check_shapes(owner: str, state: dict, expected: dict, settings: str) -> None:
    """Refuse a saved state whose tensors do not have the ``expected`` shapes of a buffer built with ``settings``."""
    for key, shape in expected.items():
        if key not in state or tuple(state[key].shape) != tuple(shape):
            found = tuple(state[key].shape) if key in state else "nothing"
            raise ValueError(f"{owner} state: {key} should have shape {tuple(shape)} ({settings}), found {found}; "
                             f"build it with the settings of the checkpoint")


class ClassMemoryBank:
    """Class-wise FIFO ring buffers: ``features`` (C, size, dim) float32, ``count`` (C,) rows stored
    per class, ``head`` (C,) the slot written next (the oldest row once a class is full). Slots
    0 .. count - 1 of a class are filled until it is full."""

    def __init__(self, num_classes: int, size: int, dim: int):
        if num_classes < 1 or size < 1 or dim < 1:
            raise ValueError(f"ClassMemoryBank needs num_classes, size and dim >= 1, got {num_classes}, {size}, {dim}")
        self.num_classes, self.size, self.dim = num_classes, size, dim
        self.features = torch.zeros((num_classes, size, dim), dtype=torch.float32)
        self.count = torch.zeros(num_classes, dtype=torch.long)
        self.head = torch.zeros(num_classes, dtype=torch.long)

    @property
    def device(self) -> torch.device:
        return self.features.device

    def to(self, device) -> "ClassMemoryBank":
        self.features, self.count, self.head = (t.to(device) for t in (self.features, self.count, self.head))
        return self

    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Store ``features`` (N, dim) under their class ``labels`` (N,) (labels outside 0 .. C - 1 are
        skipped), gathered across DDP ranks first. Within a class, later rows are newer; of more than
        ``size`` rows of one class only the last ``size`` are kept."""
        if features.ndim != 2 or features.shape[1] != self.dim or labels.shape != features.shape[:1]:
            raise ValueError(f"push expects features (N, {self.dim}) and labels (N,), got {tuple(features.shape)} "
                             f"and {tuple(labels.shape)}")
        features = gather_rows(features.detach()).to(self.device, torch.float32)
        labels = gather_rows(labels.detach().long()).to(self.device)
        keep = (labels >= 0) & (labels < self.num_classes)
        features, labels = features[keep], labels[keep]
        if labels.numel() == 0:
            return
        order = torch.sort(labels, stable=True).indices  # grouped by class, arrival order within
        labels, features = labels[order], features[order]
        arrived = torch.bincount(labels, minlength=self.num_classes)
        start = torch.cumsum(arrived, 0) - arrived
        rank = torch.arange(labels.numel(), device=self.device) - start[labels]  # 0 = oldest of its class
        dropped = (arrived - self.size).clamp_min(0)  # rows overwritten within this push
        kept = rank >= dropped[labels]
        labels, features, rank = labels[kept], features[kept], rank[kept] - dropped[labels[kept]]
        slot = (self.head[labels] + rank) % self.size
        self.features[labels, slot] = features
        stored = arrived.clamp_max(self.size)
        self.head = (self.head + stored) % self.size
        self.count = (self.count + stored).clamp_max(self.size)

    def ordered(self, c: int) -> torch.Tensor:
        """(count[c], dim) the rows of class ``c``, oldest first."""
        n, head = int(self.count[c]), int(self.head[c])
        return self.features[c, (head - n + torch.arange(n, device=self.device)) % self.size]

    def centres(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, dim) mean of the stored features per class (eq. 8) and (C,) bool whether any is stored
        (a class without rows has a zero centre)."""
        filled = torch.arange(self.size, device=self.device) < self.count[:, None]
        total = (self.features * filled[..., None]).sum(1)
        return total / self.count.clamp_min(1)[:, None].to(total.dtype), self.count > 0

    def state_dict(self) -> dict:
        return {"features": self.features.clone(), "count": self.count.clone(), "head": self.head.clone()}

    def load_state_dict(self, state: dict) -> None:
        check_shapes("ClassMemoryBank", state, {"features": self.features.shape, "count": self.count.shape,
                                                "head": self.head.shape},
                     f"num_classes, size, dim = {self.num_classes}, {self.size}, {self.dim}")
        self.features = state["features"].to(self.device, torch.float32).clone()
        self.count = state["count"].to(self.device, torch.long).clone()
        self.head = state["head"].to(self.device, torch.long).clone()


class FeatureQueue:
    """One FIFO of (feature, probability vector) pairs: ``features`` (size, dim) and ``probs``
    (size, classes) float32, ``count`` rows stored, ``head`` the row written next."""

    def __init__(self, size: int, dim: int, classes: int):
        if size < 1 or dim < 1 or classes < 1:
            raise ValueError(f"FeatureQueue needs size, dim and classes >= 1, got {size}, {dim}, {classes}")
        self.size, self.dim, self.classes = size, dim, classes
        self.features = torch.zeros((size, dim), dtype=torch.float32)
        self.probs = torch.zeros((size, classes), dtype=torch.float32)
        self.count = 0
        self.head = 0

    @property
    def device(self) -> torch.device:
        return self.features.device

    def to(self, device) -> "FeatureQueue":
        self.features, self.probs = self.features.to(device), self.probs.to(device)
        return self

    def push(self, features: torch.Tensor, probs: torch.Tensor) -> None:
        """Append ``features`` (N, dim) and ``probs`` (N, classes), gathered across DDP ranks first;
        of more than ``size`` rows only the last ``size`` are kept."""
        if features.ndim != 2 or features.shape[1] != self.dim or probs.shape != (features.shape[0], self.classes):
            raise ValueError(f"push expects features (N, {self.dim}) and probs (N, {self.classes}), got "
                             f"{tuple(features.shape)} and {tuple(probs.shape)}")
        rows = torch.cat((features.detach().float(), probs.detach().float()), 1)
        rows = gather_rows(rows).to(self.device)[-self.size:]
        n = rows.shape[0]
        if n == 0:
            return
        slot = (self.head + torch.arange(n, device=self.device)) % self.size
        self.features[slot] = rows[:, :self.dim]
        self.probs[slot] = rows[:, self.dim:]
        self.head = (self.head + n) % self.size
        self.count = min(self.count + n, self.size)

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, dim) features and (n, classes) probabilities stored, oldest first, n = ``count``."""
        slot = (self.head - self.count + torch.arange(self.count, device=self.device)) % self.size
        return self.features[slot], self.probs[slot]

    def __len__(self) -> int:
        return self.count

    def state_dict(self) -> dict:
        return {"features": self.features.clone(), "probs": self.probs.clone(), "count": self.count, "head": self.head}

    def load_state_dict(self, state: dict) -> None:
        check_shapes("FeatureQueue", state, {"features": self.features.shape, "probs": self.probs.shape},
                     f"size, dim, classes = {self.size}, {self.dim}, {self.classes}")
        self.features = state["features"].to(self.device, torch.float32).clone()
        self.probs = state["probs"].to(self.device, torch.float32).clone()
        self.count, self.head = int(state["count"]), int(state["head"])
