"""The image history pool of CycleGAN (Shrivastava et al. 2017; Zhu et al. 2017, section 4)."""
from __future__ import annotations

import torch


class ImagePool:
    """Discriminators see a mix of the newest translations and earlier ones: up to ``size``
    generated images are kept; once full, each new image is, with probability one half, swapped
    for a stored one (which is returned instead) or passed through. ``size`` 0 turns it off."""

    def __init__(self, size: int = 50, generator: torch.Generator | None = None):
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = generator

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        returned = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                returned.append(image)
            elif torch.rand(1, generator=self.generator).item() < 0.5:
                index = int(torch.randint(len(self.images), (1,), generator=self.generator))
                returned.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                returned.append(image)
        return torch.cat(returned)

    def state_dict(self) -> dict:
        return {"size": self.size, "images": [i.cpu() for i in self.images]}

    def load_state_dict(self, state: dict) -> None:
        self.size, self.images = state["size"], list(state["images"])
