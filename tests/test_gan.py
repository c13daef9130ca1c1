"""The organ-attention CycleGAN's networks, losses (eqs. 1-7 against direct transcriptions), history
pool, a short training on a toy pair of domains, and resume."""
import math

import pytest
import torch

from nnunet_uda.gan.cyclegan import OrganAttentionCycleGAN
from nnunet_uda.gan.losses import (adversarial_loss, attention_enhanced, cycle_loss, discriminator_loss,
                                   organ_attention)
from nnunet_uda.gan.networks import PatchDiscriminator, ResnetGenerator
from nnunet_uda.gan.pool import ImagePool


@pytest.mark.parametrize("shape", [(2, 1, 24, 24), (1, 1, 23, 17), (1, 1, 5, 3), (3, 1, 1, 9)])
def test_generator_keeps_any_slice_shape_and_range(shape):
    generator = ResnetGenerator(width=8, n_blocks=2)
    out = generator(torch.rand(shape) * 2 - 1)
    assert out.shape == shape and out.abs().max() <= 1


def test_generator_is_the_original_resnet_design():
    generator = ResnetGenerator()
    strided = [m for m in generator.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    transposed = [m for m in generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    blocks = [m for m in generator.modules() if type(m).__name__ == "ResidualBlock"]
    assert len(strided) == 2 and len(transposed) == 2 and len(blocks) == 9
    assert strided[-1].out_channels == 256 and isinstance(generator.model[-1], torch.nn.Tanh)


@pytest.mark.parametrize("layers, size, patches", [(3, 70, 6), (3, 37, 2), (2, 24, 4), (1, 15, 5)])
def test_patch_discriminator_maps(layers, size, patches):
    logits = PatchDiscriminator(width=8, n_layers=layers)(torch.rand(2, 1, size, size))
    assert logits.shape == (2, 1, patches, patches)


def test_adversarial_losses_match_their_equations():
    logits = torch.randn(2, 1, 3, 4)
    sigma = torch.sigmoid(logits)
    assert math.isclose(float(adversarial_loss(logits, True)), float(-torch.log(sigma).mean()), rel_tol=1e-5)
    assert math.isclose(float(adversarial_loss(logits, False)), float(-torch.log(1 - sigma).mean()), rel_tol=1e-5)
    assert math.isclose(float(adversarial_loss(logits, True, "lsgan")), float(((logits - 1) ** 2).mean()),
                        rel_tol=1e-5)
    with pytest.raises(ValueError, match="unknown GAN loss mode 'wgan'"):
        adversarial_loss(logits, True, "wgan")


def test_discriminator_loss_is_half_of_eq_1_and_leaves_the_generator_alone():
    discriminator = PatchDiscriminator(width=8, n_layers=1)
    real = torch.rand(2, 1, 16, 16)
    source = torch.rand(2, 1, 16, 16, requires_grad=True)
    fake = source * 2
    loss = discriminator_loss(discriminator, real, fake)
    with torch.no_grad():
        expected = 0.5 * (-torch.log(torch.sigmoid(discriminator(real))).mean()
                      - torch.log(1 - torch.sigmoid(discriminator(fake))).mean())
    assert math.isclose(loss.item(), float(expected), rel_tol=1e-5)
    loss.backward()
    assert source.grad is None and all(p.grad is not None for p in discriminator.parameters())


def test_cycle_loss_is_the_mean_l1_distance():
    image, cycled = torch.rand(2, 1, 4, 5), torch.rand(2, 1, 4, 5)
    expected = sum(abs(float(a) - float(b)) for a, b in zip(image.flatten(), cycled.flatten())) / image.numel()
    assert math.isclose(float(cycle_loss(image, cycled)), expected, rel_tol=1e-5)


def test_organ_attention_range_and_effect():
    probabilities = torch.softmax(torch.randn(2, 4, 6, 7) * 3, 1)
    probabilities[:, :, :2] = torch.tensor([1.0, 0, 0, 0]).view(1, 4, 1, 1)  # certain background rows
    attention = organ_attention(probabilities)
    assert attention.shape == (2, 1, 6, 7) and attention.min() >= 0 and attention.max() <= 1
    assert torch.allclose(attention, probabilities[:, 1:].sum(1, keepdim=True), atol=1e-6)
    translated = torch.rand(2, 1, 6, 7) * 2 - 1
    enhanced = attention_enhanced(translated, attention)
    assert torch.equal(enhanced[:, :, :2], translated[:, :, :2])  # background untouched
    assert torch.all(enhanced[:, :, 2:] >= translated[:, :, 2:]) and (enhanced - translated).max() > 0.5


def test_image_pool_mixes_history_once_full_and_round_trips():
    pool = ImagePool(3, torch.Generator().manual_seed(0))
    first = pool.query(torch.arange(3.0).view(3, 1, 1, 1))
    assert first.flatten().tolist() == [0.0, 1.0, 2.0]
    later = torch.cat([pool.query(torch.full((1, 1, 1, 1), 10.0 + i)) for i in range(40)]).flatten().tolist()
    assert any(v < 10 for v in later) and any(v >= 10 for v in later)  # old images returned, new ones passed
    assert ImagePool(0).query(torch.ones(2, 1, 1, 1)).sum() == 2
    copy = ImagePool(1)
    copy.load_state_dict(pool.state_dict())
    assert [float(i) for i in copy.images] == [float(i) for i in pool.images] and copy.size == 3


def toy_domains(n: int, size: int = 16, seed: int = 0):
    """Source: a bright disk on a dark ground; target: the same kind of scene, intensities inverted,
    with disks elsewhere (unpaired). The attention map marks the source disk."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")

    def scenes():
        centres = torch.randint(4, size - 4, (n, 2), generator=g)
        radii = torch.randint(2, 4, (n,), generator=g)
        disks = ((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) <= radii[:, None, None] ** 2
        return disks.float().unsqueeze(1)
    source_disks, target_disks = scenes(), scenes()
    return source_disks * 1.6 - 0.8, 0.8 - target_disks * 1.6, source_disks


def test_a_short_training_lowers_the_losses_on_a_toy_pair_of_domains():
    torch.manual_seed(0)
    source, target, disks = toy_domains(32)
    model = OrganAttentionCycleGAN(width=8, n_blocks=2, discriminator_layers=1, pool_size=8)
    history = []
    for step in range(120):
        batch = torch.arange(2) + 2 * (step % 16)
        history.append(model.train_step(source[batch], target[batch], disks[batch]))
    first, last = history[:10], history[-10:]

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)
    assert set(history[0]) == {"gan_target", "gan_source", "cycle", "gan_local", "d_target", "d_source", "d_local"}
    assert mean(last, "cycle") < 0.5 * mean(first, "cycle")
    with torch.no_grad():
        translated = model.g_target(source)
    assert abs(translated.mean() - target.mean()) < 0.25 * abs(source.mean() - target.mean())  # the target's range


def test_attention_is_required_unless_switched_off():
    source, target, disks = toy_domains(2)
    with pytest.raises(ValueError, match="attention maps"):
        OrganAttentionCycleGAN(width=8, n_blocks=1, discriminator_layers=1).train_step(source, target)
    losses = OrganAttentionCycleGAN(attention=False, width=8, n_blocks=1, discriminator_layers=1).train_step(
        source, target)
    assert "gan_local" not in losses and "d_local" not in losses


def test_training_state_resumes_exactly():
    source, target, disks = toy_domains(4)
    torch.manual_seed(1)
    model = OrganAttentionCycleGAN(width=8, n_blocks=1, discriminator_layers=1, pool_size=2)
    for _ in range(3):
        model.train_step(source[:2], target[:2], disks[:2])
    state = model.training_state()
    resumed = OrganAttentionCycleGAN(width=8, n_blocks=1, discriminator_layers=1, pool_size=2)
    resumed.load_training_state(state)
    torch.manual_seed(2)
    expected = model.train_step(source[2:], target[2:], disks[2:])
    torch.manual_seed(2)
    assert resumed.train_step(source[2:], target[2:], disks[2:]) == expected


def test_translation_keeps_geometry_and_is_independent_of_the_batch(tmp_path):
    import numpy as np
    import SimpleITK as sitk

    from nnunet_uda.gan.translation import translate_image_file, translate_volume
    from nnunet_uda.intensity import harmonize

    generator = ResnetGenerator(width=8, n_blocks=1).eval()
    volume = np.random.default_rng(0).uniform(-1, 1, (7, 13, 10)).astype(np.float32)  # harmonised
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 1.3, 2.5))
    image.SetOrigin((-10.5, 3.25, 100.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    translate_image_file(generator, tmp_path / "ct.nii.gz", tmp_path / "mr.nii.gz", batch_size=3)
    written = sitk.ReadImage(str(tmp_path / "mr.nii.gz"))
    assert written.GetSize() == image.GetSize()
    assert np.allclose(written.GetSpacing(), image.GetSpacing()) and np.allclose(written.GetOrigin(), image.GetOrigin())
    assert np.allclose(written.GetDirection(), image.GetDirection())
    values = sitk.GetArrayFromImage(written)
    assert values.min() == -1 and values.max() == 1  # harmonised as MRI
    translated = translate_volume(generator, volume, 1)
    assert np.allclose(translated, translate_volume(generator, volume, 5), atol=1e-5)
    with torch.no_grad():
        third = generator(torch.from_numpy(volume[2:3, None]))[0, 0].numpy()
    assert np.allclose(translated[2], third, atol=1e-5)
    assert np.allclose(values, harmonize(translated, "MR"), atol=1e-5)


def test_slices_fit_one_size_and_batch_unpaired(tmp_path):
    import numpy as np
    import SimpleITK as sitk

    from nnunet_uda.gan.slices import UnpairedSlices, fit_slices, read_slices

    volume = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    fitted = fit_slices(volume, (5, 3), -1.0)
    assert fitted.shape == (2, 5, 3)
    assert np.array_equal(fitted[:, 1:4], volume[:, :, 1:4]) and np.all(fitted[:, [0, 4]] == -1)
    for i, shape in enumerate([(4, 6, 8), (3, 10, 7)]):
        sitk.WriteImage(sitk.GetImageFromArray(np.full(shape, 0.5 * i, np.float32)), str(tmp_path / f"{i}.nii.gz"))
    slices = read_slices([tmp_path / "0.nii.gz", tmp_path / "1.nii.gz"], (8, 8))
    assert slices.shape == (7, 1, 8, 8) and slices.min() == -1 and slices.max() == 0.5
    assert torch.all(slices[:4, 0, 1:7, :] == 0) and torch.all(slices[:4, 0, [0, 7]] == -1)  # 6 rows padded to 8
    assert torch.all(slices[4:, 0, :, :7] == 0.5) and torch.all(slices[4:, 0, :, 7] == -1)  # 10 rows cropped
    data = UnpairedSlices(slices, -slices, torch.zeros_like(slices))
    source, target, attention = data.batch(4, torch.Generator().manual_seed(0))
    assert source.shape == target.shape == attention.shape == (4, 1, 8, 8)
    with pytest.raises(ValueError, match="attention maps .* do not match the source slices"):
        UnpairedSlices(slices, slices, slices[:3])
    paths = [tmp_path / "0.nii.gz", tmp_path / "1.nii.gz"]
    mapped = read_slices(paths, (8, 8), cache=tmp_path / "slices.f32")
    assert torch.equal(mapped, slices) and (tmp_path / "slices.f32").stat().st_size == 7 * 8 * 8 * 4
    sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 10, 7), 3, np.uint8)), str(tmp_path / "label.nii.gz"))
    labels = read_slices([tmp_path / "label.nii.gz"], (8, 8), fill=0.0, dtype=np.uint8, cache=tmp_path / "labels.u8")
    assert labels.dtype == torch.uint8 and (tmp_path / "labels.u8").stat().st_size == 3 * 8 * 8
    assert torch.all(labels[:, 0, :, :7] == 3) and torch.all(labels[:, 0, :, 7] == 0)


def test_training_writes_previews_and_resumes_where_it_stopped(tmp_path):
    from nnunet_uda.gan.slices import UnpairedSlices
    from nnunet_uda.gan.training import CycleGANSettings, load_generator, train_cyclegan

    source, target, disks = toy_domains(6)
    data = UnpairedSlices(source, target, disks)
    settings = CycleGANSettings(epochs=2, iterations=3, width=8, n_blocks=1, discriminator_layers=1)
    straight = train_cyclegan(data, settings, tmp_path / "straight", preview_labels=disks.long())
    assert len(straight) == 2 and (tmp_path / "straight" / "preview_epoch_002.png").is_file()
    assert (tmp_path / "straight" / "losses.png").is_file()
    train_cyclegan(data, CycleGANSettings(**{**settings.__dict__, "epochs": 1}), tmp_path / "resumed")
    with pytest.raises(ValueError, match=r"other settings .*'width': \(4, 8\)"):
        train_cyclegan(data, CycleGANSettings(**{**settings.__dict__, "width": 4}), tmp_path / "resumed")
    resumed = train_cyclegan(data, settings, tmp_path / "resumed")  # one more epoch
    assert resumed == straight
    a, b = (load_generator(tmp_path / f / "generator_final.pth") for f in ("straight", "resumed"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_3d_patch_discriminator_judges_volumes_patch_by_patch():
    discriminator = PatchDiscriminator(in_channels=3, width=4, n_layers=1, dims=3)
    logits = discriminator(torch.rand(2, 3, 16, 16, 16))
    assert logits.shape == (2, 1, 6, 6, 6)
    assert PatchDiscriminator(width=4, n_layers=1)(torch.rand(2, 1, 16, 16)).shape == (2, 1, 6, 6)
