"""CISFA's weighted patch-wise contrast (eqs. 2-4) and global contrast (eq. 5) against loop transcriptions; the
label weights at each layer's resolution; autocast; edge cases."""
import math

import pytest
import torch

from nnunet_uda.losses.patch_nce import foreground_weights, global_contrast, patch_nce, sample_positions


def cosine(a, b):
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


def loop_patch_nce(queries, keys, weights, tau):
    """Eqs. 2 and 4: the mean over images and positions of w_p(u) -log[e^{u.u+/tau} / sum_v e^{u.v/tau}]."""
    terms = []
    for b in range(len(queries)):
        for s, u in enumerate(queries[b]):
            numerator = math.exp(cosine(u, keys[b][s]) / tau)
            denominator = sum(math.exp(cosine(u, v) / tau) for v in keys[b])
            terms.append(weights[b][s] * -math.log(numerator / denominator))
    return sum(terms) / len(terms)


def loop_global_contrast(first, second, tau):
    """Eq. 5 with z = (first..., second...), j(i) the other member of i's pair."""
    z, t = first + second, len(first)
    total = 0.0
    for i in range(2 * t):
        j = i + t if i < t else i - t
        numerator = math.exp(cosine(z[i], z[j]) / tau)
        denominator = sum(math.exp(cosine(z[i], z[k]) / tau) for k in range(2 * t) if k != i)
        total += -math.log(numerator / denominator)
    return total / (2 * t)


@pytest.mark.parametrize("weighted", [False, True])
def test_patch_nce_matches_the_loop_transcription(weighted):
    g = torch.Generator().manual_seed(0)
    queries, keys = (torch.randn(2, 5, 4, generator=g, dtype=torch.float64) for _ in range(2))
    weights = torch.where(torch.rand(2, 5, generator=g) > 0.5, 2.0, 1.0).double() if weighted else None
    expected = loop_patch_nce(queries.tolist(), keys.tolist(), weights.tolist() if weighted else [[1.0] * 5] * 2,
                              0.2)
    assert patch_nce(queries, keys, weights, 0.2).item() == pytest.approx(expected, rel=1e-9)


def test_patch_nce_pulls_each_query_to_its_own_position():
    """Identical input and translation features score lower than shuffled ones; the gradient reaches both."""
    g = torch.Generator().manual_seed(1)
    keys = torch.randn(1, 8, 6, generator=g)
    queries = keys.clone().requires_grad_(True)
    keys.requires_grad_(True)
    aligned = patch_nce(queries, keys)
    shuffled = patch_nce(queries[:, torch.randperm(8, generator=g)], keys)
    assert aligned.item() < shuffled.item()
    aligned.backward()
    assert queries.grad.abs().sum() > 0 and keys.grad.abs().sum() > 0


def test_global_contrast_matches_the_loop_transcription():
    g = torch.Generator().manual_seed(2)
    first, second = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(2))
    expected = loop_global_contrast(first.tolist(), second.tolist(), 0.2)
    assert global_contrast(first, second, 0.2).item() == pytest.approx(expected, rel=1e-9)


def test_global_contrast_of_a_single_pair_is_zero_and_connected():
    first = torch.randn(1, 4, requires_grad=True)
    loss = global_contrast(first, torch.randn(1, 4))
    assert loss.item() == 0 and loss.requires_grad


def test_both_losses_ignore_autocast():
    g = torch.Generator().manual_seed(3)
    queries, keys = torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)
    plain = patch_nce(queries, keys), global_contrast(queries[:, 0], keys[:, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = patch_nce(queries, keys), global_contrast(queries[:, 0], keys[:, 0])
    assert all(a.dtype == torch.float32 and a.item() == b.item() for a, b in zip(cast, plain))


def test_foreground_weights_at_each_layer_resolution():
    labels = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    labels[0, 0, :4, :4] = 2  # a foreground quarter
    labels[0, 0, 4:, 4:] = 5  # the ignore label
    full = foreground_weights(labels, (8, 8), ignore_label=5)
    assert full.shape == (1, 8, 8) and full[0, :4, :4].eq(2).all() and full.sum().item() == 16 * 2 + 48
    half = foreground_weights(labels, (4, 4), ignore_label=5)
    assert half[0, :2, :2].eq(2).all() and half.sum().item() == 4 * 2 + 12
    assert foreground_weights(labels, (2, 2), ignore_label=5)[0].tolist() == [[2.0, 1.0], [1.0, 1.0]]
    assert foreground_weights(labels, (2, 2))[0].tolist() == [[2.0, 1.0], [1.0, 2.0]]  # without an ignore label
    volume = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    volume[..., :2, :2, :2] = 1
    assert foreground_weights(volume, (2, 2, 2))[0, 0, 0, 0] == 2 and foreground_weights(volume, (2, 2, 2)).sum() == 9


def test_sample_positions_are_distinct_and_bounded():
    g = torch.Generator().manual_seed(4)
    positions = sample_positions((6, 7), 10, g)
    assert len(set(positions.tolist())) == 10 and positions.max() < 42
    assert sorted(sample_positions((3, 3), 20, g).tolist()) == list(range(9))


def test_layered_patch_nce_trains_the_heads_and_the_generator_through_both_images():
    from nnunet_uda.gan.networks import ResnetGenerator
    from nnunet_uda.losses.patch_nce import layered_patch_nce
    from nnunet_uda.nn.projection import ProjectionHead

    torch.manual_seed(0)
    generator = ResnetGenerator(width=4, n_blocks=5)
    image = torch.randn(2, 1, 12, 12)
    labels = torch.zeros(2, 1, 12, 12, dtype=torch.long)
    labels[:, :, 3:9, 3:9] = 1
    source = generator.encode(image)
    assert [tuple(f.shape[1:]) for f in source] == [(1, 18, 18), (8, 6, 6), (16, 3, 3), (16, 3, 3), (16, 3, 3)]
    translated = generator.encode(generator(image))
    heads = torch.nn.ModuleList(ProjectionHead(f.shape[1], 16, hidden=16) for f in source)
    loss = layered_patch_nce(source, translated, heads, labels, patches=10)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())
    assert generator.model[1].weight.grad.abs().sum() > 0
    # the weights: the same features with every patch in the foreground give exactly twice the loss
    g = [torch.Generator().manual_seed(5) for _ in range(2)]
    plain = layered_patch_nce(source, translated, heads, torch.zeros_like(labels), patches=10, generator=g[0])
    doubled = layered_patch_nce(source, translated, heads, torch.ones_like(labels), patches=10, generator=g[1])
    assert doubled.item() == pytest.approx(2 * plain.item(), rel=1e-6)


def test_encode_returns_the_tapped_layers_of_the_forward_pass():
    from nnunet_uda.gan.networks import ResnetGenerator

    generator = ResnetGenerator(width=4, n_blocks=2).eval()
    image = torch.randn(1, 1, 9, 10)
    x, outputs = generator._pad(image), []
    for layer in generator.model:
        x = layer(x)
        outputs.append(x)
    assert all(torch.equal(a, outputs[i]) for a, i in zip(generator.encode(image, (0, 4, 9)), (0, 4, 9)))
    assert torch.equal(outputs[-1][..., :9, :10], generator(image))
