"""PGPS (AICL eqs. 2-3) against a loop transcription: centres, cuboids, borders, absent organs."""
import math

import numpy as np
import pytest
import torch

from nnunet_uda.nn.organ_patches import OrganPatchSampler, downsample_probabilities, fitted_size, organ_centres


def random_probs(seed, b=2, c=4, shape=(8, 10, 12)):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(b, c, *shape, generator=g), 1)


def loop_centre(probs, sample, cls):
    """Mean coordinate of the voxels whose argmax is ``cls`` (None if there are none)."""
    winner = probs[sample].argmax(0)
    voxels = [(i, j, k) for i in range(winner.shape[0]) for j in range(winner.shape[1])
              for k in range(winner.shape[2]) if winner[i, j, k] == cls]
    return np.mean(voxels, axis=0) if voxels else None


def loop_cuboid(features, sample, centre, size):
    """Eqs. 2-3 with the cuboid shifted inside the map: F[:, |h - h_c| <= r_h, ...]."""
    lo = []
    for axis, (c, s) in enumerate(zip(centre, size)):
        n = features.shape[2 + axis]
        lo.append(min(max(int(round(c)) - (s - 1) // 2, 0), n - s))
    return features[sample, :, lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]]


def test_centres_match_the_loop_definition():
    probs = random_probs(0)
    centres, present = organ_centres(probs)
    for b in range(2):
        for k in range(1, 4):
            expected = loop_centre(probs, b, k)
            assert present[b, k - 1] == (expected is not None)
            np.testing.assert_allclose(centres[b, k - 1].numpy(), expected, rtol=1e-5)


def test_cuboids_match_the_loop_definition_including_borders():
    probs = random_probs(1, shape=(16, 16, 16))
    # one organ pushed into a corner so its cuboid is clamped
    probs[0, 1] = 0
    probs[0, 1, :2, :2, :2] = 10
    features = torch.randn(2, 3, 8, 8, 8)
    sampler = OrganPatchSampler((5, 3, 5))
    patches = sampler(features, probs)
    low = downsample_probabilities(probs, (8, 8, 8))
    assert patches.embeddings.shape == (2, 3, 3 * 5 * 3 * 5)
    for b in range(2):
        for k in range(1, 4):
            centre = loop_centre(low, b, k)
            if centre is None:
                assert not patches.present[b, k - 1]
                continue
            expected = loop_cuboid(features, b, centre, (5, 3, 5)).reshape(-1)
            torch.testing.assert_close(patches.embeddings[b, k - 1], expected)
    assert patches.starts[0, 0].tolist() == [0, 0, 0]


def test_downsampling_averages_probabilities():
    probs = random_probs(2, shape=(8, 8, 8))
    low = downsample_probabilities(probs, (2, 4, 4))
    torch.testing.assert_close(low[0, :, 0, 0, 0], probs[0, :, :4, :2, :2].mean((1, 2, 3)))
    torch.testing.assert_close(low.sum(1), torch.ones(2, 2, 4, 4))


def test_absent_organ_is_skipped_without_nan():
    probs = random_probs(3)
    probs[:, 2] = -1.0  # class 2 never wins
    patches = OrganPatchSampler((3, 3, 3))(torch.randn(2, 4, 4, 5, 6, requires_grad=True), probs)
    assert not patches.present[:, 1].any() and patches.present[:, 0].all()
    assert torch.isfinite(patches.embeddings).all() and torch.isnan(patches.centres[:, 1]).all()


def test_sizes_must_be_odd_and_shrink_to_the_map():
    assert fitted_size((7, 7, 7), (6, 9, 4)) == (5, 7, 3)
    with pytest.raises(ValueError, match="must be odd"):
        fitted_size((4, 5, 5), (8, 8, 8))


def test_organ_adaptive_cuboids_are_pooled_to_the_common_size():
    probs = random_probs(4, shape=(16, 16, 16))
    features = torch.randn(2, 3, 8, 8, 8)
    sampler = OrganPatchSampler((3, 3, 3), organ_sizes={1: (5, 5, 5)})
    patches = sampler(features, probs)
    low = downsample_probabilities(probs, (8, 8, 8))
    for b in range(2):
        centre = loop_centre(low, b, 1)
        cuboid = loop_cuboid(features, b, centre, (5, 5, 5))
        expected = torch.nn.functional.adaptive_avg_pool3d(cuboid, (3, 3, 3)).reshape(-1)
        torch.testing.assert_close(patches.embeddings[b, 0], expected)
        other = loop_cuboid(features, b, loop_centre(low, b, 2), (3, 3, 3)).reshape(-1)
        torch.testing.assert_close(patches.embeddings[b, 1], other)


def test_gradients_reach_features_not_predictions():
    logits = torch.randn(2, 4, 8, 8, 8, requires_grad=True)
    features = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    patches = OrganPatchSampler((3, 3, 3))(features, torch.softmax(logits, 1))
    patches.embeddings.sum().backward()
    assert features.grad.abs().sum() > 0 and logits.grad is None
    assert math.isclose(float(features.grad.sum()), float(patches.present.sum() * 3 * 27))


def test_2d_squares_match_the_loop_definition():
    """nnU-Net's 2d configuration: centres and squares of 2D maps (organ-adaptive ones pooled) as in 3D."""
    probs = random_probs(5, shape=(16, 16))
    features = torch.randn(2, 3, 8, 8)
    low = downsample_probabilities(probs, (8, 8))
    torch.testing.assert_close(low[0, :, 0, 0], probs[0, :, :2, :2].mean((1, 2)))
    patches = OrganPatchSampler((3, 3), organ_sizes={1: (5, 5)})(features, probs)
    assert patches.embeddings.shape == (2, 3, 3 * 3 * 3) and patches.starts.shape == (2, 3, 2)
    for b in range(2):
        for k in range(1, 4):
            winner = low[b].argmax(0)
            pixels = [(i, j) for i in range(8) for j in range(8) if winner[i, j] == k]
            assert bool(patches.present[b, k - 1]) == bool(pixels)
            if not pixels:
                continue
            centre = np.mean(pixels, axis=0)
            np.testing.assert_allclose(patches.centres[b, k - 1].numpy(), centre, rtol=1e-5)
            size = 5 if k == 1 else 3
            lo = [min(max(int(round(c)) - (size - 1) // 2, 0), 8 - size) for c in centre]
            square = features[b, :, lo[0]:lo[0] + size, lo[1]:lo[1] + size]
            if size == 5:
                square = torch.nn.functional.adaptive_avg_pool2d(square, (3, 3))
            torch.testing.assert_close(patches.embeddings[b, k - 1], square.reshape(-1))


def test_a_size_of_the_wrong_dimensionality_is_named():
    with pytest.raises(ValueError, match=r"\(7, 7, 7\) has 3 axes, the feature maps 2"):
        OrganPatchSampler((7, 7, 7))(torch.randn(1, 2, 8, 8), random_probs(6, b=1, shape=(8, 8)))
