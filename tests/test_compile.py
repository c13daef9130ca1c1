"""torch.compile (nnU-Net compiles the network on CUDA) of the plugin's networks on the CPU: the domain-conditioned
network and the feature taps trace into one graph each (``fullgraph``: no graph break, no host synchronisation)
and compute what the eager network computes, forward and backward. The backend is ``aot_eager`` (TorchDynamo's
tracing and AOT autograd, what the plugin's code meets; inductor's code generation is torch's own and takes minutes
on two cores: measured in docs/benchmarks.md#torchcompile-on-the-cpu)."""
import pytest
import torch

from conftest import tiny_unet
from nnunet_uda.nn.conditional_norm import ConditionalInstanceNorm
from nnunet_uda.nn.network import INFERENCE_DOMAIN_ENV, DomainConditionedUNet


def build():
    torch.manual_seed(0)
    return DomainConditionedUNet(tiny_unet("resenc"), ["CT", "T1"], "T1")


def flat(output):
    """Every tensor of an output: logits, or logits and features."""
    if torch.is_tensor(output):
        return [output]
    if isinstance(output, list):
        return output
    return [*output.logits, *output.encoder, *output.decoder]


@pytest.mark.parametrize("return_features", [False, True])
def test_compiled_network_matches_eager_forward_and_backward(return_features):
    """The conditional network (whose forward is the plain one's with the domains set) with and without features."""
    torch._dynamo.reset()
    network = build()
    compiled = torch.compile(network, backend="aot_eager", fullgraph=True)
    x, domains = torch.randn(2, 1, 16, 16, 16), torch.tensor([0, 1])
    outputs = []
    for model in (network, compiled):
        model.zero_grad()
        out = flat(model(x, domains, return_features=return_features))
        sum(o.square().mean() for o in out).backward()
        outputs.append((out, [p.grad.clone() for p in network.parameters()]))
    (eager, eager_grads), (traced, traced_grads) = outputs
    for a, b in zip(eager + eager_grads, traced + traced_grads):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_compiled_predictor_call_uses_the_inference_domain(monkeypatch):
    """nnU-Net's predictor calls ``network(x)``: the stored inference domain, or the environment's, both traced."""
    torch._dynamo.reset()
    network = build().eval()
    with torch.no_grad():
        for norm in (m for m in network.modules() if isinstance(m, ConditionalInstanceNorm)):
            norm.weight[1].mul_(3)  # the domains differ
        x = torch.randn(1, 1, 16, 16, 16)
        compiled = torch.compile(network, backend="aot_eager", fullgraph=True)
        for domain in ("T1", "CT"):
            monkeypatch.setenv(INFERENCE_DOMAIN_ENV, domain)
            expected = network(x, torch.tensor([network.domain_names.index(domain)]))
            torch.testing.assert_close(compiled(x)[0], expected[0], rtol=1e-5, atol=1e-6)
        monkeypatch.delenv(INFERENCE_DOMAIN_ENV)
        torch.testing.assert_close(compiled(x)[0], network(x, torch.tensor([1]))[0], rtol=1e-5, atol=1e-6)
