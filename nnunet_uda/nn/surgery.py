"""Module surgery on networks built by nnU-Net (dynamic_network_architectures)."""
from __future__ import annotations

from torch import nn

from nnunet_uda.nn.conditional_norm import ConditionalInstanceNorm, DomainContext


def replace_instance_norms(module: nn.Module, num_domains: int, context: DomainContext) -> int:
    """Replace every instance norm inside ``module`` by a :class:`ConditionalInstanceNorm`.

    Each new layer starts with the replaced layer's affine parameters for every domain. Returns
    how many layers were replaced; a module without instance norms is an error, since a plugin
    network without conditional norms would silently ignore the domains.
    """
    # nnU-Net's blocks hold each norm twice (as ``norm`` and inside ``all_modules``): visit every
    # path, and give all paths of one norm the same new layer.
    paths = [(name, m) for name, m in module.named_modules(remove_duplicate=False)
             if isinstance(m, nn.modules.instancenorm._InstanceNorm)]
    if not paths:
        raise ValueError(f"{type(module).__name__} has no instance normalisation layers to condition on the "
                         f"domain; nnunet_uda's conditional norms need nnU-Net's default InstanceNorm")
    replacements: dict[int, ConditionalInstanceNorm] = {}
    for name, norm in paths:
        if id(norm) not in replacements:
            replacements[id(norm)] = ConditionalInstanceNorm.from_instance_norm(norm, num_domains, context)
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attr, replacements[id(norm)])
    return len(replacements)
