import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_uda.nn.conditional_norm import ConditionalInstanceNorm, DomainContext
from nnunet_uda.nn.network import INFERENCE_DOMAIN_ENV, DomainConditionedUNet, NetworkOutput
from tests.conftest import tiny_unet

DOMAINS = ["CT", "T1", "T2"]


def randomise_cin(net):
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, ConditionalInstanceNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def test_cin_matches_equation_1_per_sample():
    """CIN(z) = gamma_m (z - mu(z)) / sigma(z) + beta_m, each sample with its own domain (eq. 1)."""
    torch.manual_seed(0)
    ctx = DomainContext()
    cin = ConditionalInstanceNorm(3, 2, ctx)
    with torch.no_grad():
        cin.weight.uniform_(0.5, 2)
        cin.bias.uniform_(-1, 1)
    z = torch.randn(4, 3, 5, 6, 7)
    ctx.domains = torch.tensor([0, 1, 1, 0])
    out = cin(z)
    for b in range(4):
        m = int(ctx.domains[b])
        for c in range(3):
            x = z[b, c]
            ref = cin.weight[m, c] * (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5) + cin.bias[m, c]
            torch.testing.assert_close(out[b, c], ref, atol=1e-5, rtol=1e-5)


def test_cin_without_domains_fails_clearly():
    cin = ConditionalInstanceNorm(2, 2, DomainContext())
    with pytest.raises(RuntimeError, match="domain index"):
        cin(torch.randn(1, 2, 4, 4, 4))


def test_surgery_replaces_every_encoder_norm_only(unet_kind):
    unet = tiny_unet(unet_kind)
    n_encoder_norms = sum(isinstance(m, nn.InstanceNorm3d) for m in unet.encoder.modules())
    n_decoder_norms = sum(isinstance(m, nn.InstanceNorm3d) for m in unet.decoder.stages.modules())
    net = DomainConditionedUNet(unet, DOMAINS, "T1")
    assert sum(isinstance(m, ConditionalInstanceNorm) for m in net.encoder.modules()) == n_encoder_norms > 0
    assert not any(isinstance(m, nn.InstanceNorm3d) for m in net.encoder.modules())
    assert sum(isinstance(m, nn.InstanceNorm3d) for m in net.decoder.stages.modules()) == n_decoder_norms > 0
    # parameter names stay nnU-Net's
    assert any(k.startswith("encoder.stages.0") for k in net.state_dict())


def test_fresh_network_equals_nnunet_network(unet_kind):
    """Every domain starts from nnU-Net's norm parameters: outputs equal the unmodified network's."""
    unet = tiny_unet(unet_kind, deep_supervision=False)
    reference = copy.deepcopy(unet)
    net = DomainConditionedUNet(unet, DOMAINS, "T2")
    x = torch.randn(2, 1, 16, 16, 16)
    torch.testing.assert_close(net(x, torch.tensor([0, 2])), reference(x))


def test_mixed_batch_equals_separate_passes(unet_kind):
    net = DomainConditionedUNet(tiny_unet(unet_kind, deep_supervision=False), DOMAINS, "T1")
    randomise_cin(net)
    x = torch.randn(3, 1, 16, 16, 16)
    domains = torch.tensor([2, 0, 1])
    together = net(x, domains)
    for b in range(3):
        torch.testing.assert_close(together[b:b + 1], net(x[b:b + 1], domains[b:b + 1]), atol=1e-5, rtol=1e-4)
    # the domain matters once the parameters differ
    assert not torch.allclose(net(x[:1], torch.tensor([0])), net(x[:1], torch.tensor([1])))


def test_features_in_one_pass_match_plain_forward(unet_kind):
    net = DomainConditionedUNet(tiny_unet(unet_kind), DOMAINS, "T1")
    randomise_cin(net)
    x = torch.randn(2, 1, 16, 16, 16)
    d = torch.tensor([0, 1])
    out = net(x, d, return_features=True)
    assert isinstance(out, NetworkOutput)
    plain = net(x, d)
    assert len(out.logits) == len(plain)
    for a, b in zip(out.logits, plain):
        torch.testing.assert_close(a, b)
    assert [f.shape[-1] for f in out.encoder] == [16, 8, 4]
    assert len(out.decoder) == len(net.decoder.stages)
    assert out.decoder[0].shape[-1] == 16  # highest resolution first
    net.decoder.deep_supervision = False
    out = net(x, d, return_features=True)
    torch.testing.assert_close(out.logits, net(x, d))


def test_inference_domain_stored_with_weights_and_overridable(unet_kind, monkeypatch):
    net = DomainConditionedUNet(tiny_unet(unet_kind, deep_supervision=False), DOMAINS, "T2")
    randomise_cin(net)
    assert int(net.state_dict()["inference_domain"]) == 2
    x = torch.randn(1, 1, 16, 16, 16)
    torch.testing.assert_close(net(x), net(x, torch.tensor([2])))
    monkeypatch.setenv(INFERENCE_DOMAIN_ENV, "CT")
    torch.testing.assert_close(net(x), net(x, torch.tensor([0])))
    monkeypatch.setenv(INFERENCE_DOMAIN_ENV, "PET")
    with pytest.raises(ValueError, match="PET"):
        net(x)
    # the stored domain survives a state-dict round trip into a fresh network
    monkeypatch.delenv(INFERENCE_DOMAIN_ENV)
    fresh = DomainConditionedUNet(tiny_unet(unet_kind, deep_supervision=False), DOMAINS, "CT")
    fresh.load_state_dict(net.state_dict())
    assert int(fresh.inference_domain) == 2
    torch.testing.assert_close(fresh(x), net(x))


def test_gradients_reach_only_the_domains_in_the_batch(unet_kind):
    net = DomainConditionedUNet(tiny_unet(unet_kind, deep_supervision=False), DOMAINS, "T1")
    x = torch.randn(2, 1, 16, 16, 16)
    F.cross_entropy(net(x, torch.tensor([0, 2])), torch.randint(0, 4, (2, 16, 16, 16))).backward()
    cins = [m for m in net.encoder.modules() if isinstance(m, ConditionalInstanceNorm)]
    for m in cins:
        assert m.weight.grad[1].abs().sum() == 0 and m.bias.grad[1].abs().sum() == 0
    assert all(m.weight.grad[[0, 2]].abs().sum() > 0 for m in cins)
    convs = [m for m in net.encoder.modules() if isinstance(m, nn.Conv3d)]
    assert all(c.weight.grad is not None and c.weight.grad.abs().sum() > 0 for c in convs)
