"""MLKD's strong view: the device path reproduces PIL pixel for pixel given the same draws, both paths draw the same
law (per-op frequencies, magnitudes, crops, output statistics on Fashion-MNIST), and the device path is
deterministic for a generator seed."""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dataset import cifar100
from dataset.fashion_mnist import DEBIAN_FOLDER, FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from dataset.strong_aug import (CUTOUT_FILL, OPS, RANGES, RandAugment, TwoViewDataset, apply_op_on_device,
                                cutout_on_device, draw_strong_params, magnitude, pil_cutout, pil_op,
                                randaugment_on_device, random_crop_flip, strong_transform, strong_views_on_device)
from distiller_zoo.base import Batch

HAVE_FASHION = os.path.isdir(DEBIAN_FOLDER)


def synthetic_images(n, seed=0):
    """uint8 [n, 32, 32, 3]: smooth colour images (bilinear upsampling of 8x8 noise), a few flat and two-level ones."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    images = np.stack([np.array(Image.fromarray(patch).resize((32, 32), Image.BILINEAR)) for patch in low])
    images[0] = 77  # one level per channel: AutoContrast / Equalize leave it as it is
    images[1] = np.where(rng.random((32, 32, 1)) < 0.5, 10, 200).astype(np.uint8)  # two levels
    images[2] = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)  # white noise
    return images


@pytest.fixture(scope="module")
def images():
    """Fashion-MNIST padded to 32x32x3 (when installed) and synthetic colour images, uint8 [N, 32, 32, 3]."""
    parts = [synthetic_images(48)]
    if HAVE_FASHION:
        parts.append(load_fashion_mnist("/nonexistent", train=True)[0][:48])
    return np.concatenate(parts)


def nchw(array):
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()


def by_pil(array, fn):
    """fn(PIL image, i) for every image i -> uint8 [N, C, H, W]."""
    return nchw(np.stack([np.array(fn(Image.fromarray(img), i)) for i, img in enumerate(array)]))


# ---- same draws, same pixels --------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", range(len(OPS)), ids=OPS)
def test_each_op_on_the_device_equals_pil_pixel_for_pixel(images, op):
    u = torch.rand(len(images), generator=torch.Generator().manual_seed(op), dtype=torch.float64)
    u[:2] = torch.tensor([0.0, 1.0 - 2 ** -53])  # both ends of the magnitude's range
    v = torch.tensor([magnitude(op, draw) for draw in u.tolist()], dtype=torch.float64)
    expected = by_pil(images, lambda img, i: pil_op(img, op, v[i].item()))
    got = apply_op_on_device(nchw(images), torch.full((len(images),), op), v)
    assert got.dtype == torch.uint8
    assert torch.equal(got, expected)


def test_cutout_on_the_device_equals_pil_pixel_for_pixel(images):
    draws = torch.rand(len(images), 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    draws[0] = torch.tensor([0.0, 0.5, 0.5])  # no cutout
    draws[1] = torch.tensor([0.999, 0.0, 0.999])  # largest square, clipped at the bottom right
    expected = by_pil(images, lambda img, i: pil_cutout(img, *draws[i].tolist()))
    assert torch.equal(cutout_on_device(nchw(images), draws), expected)


def test_whole_randaugment_on_the_device_equals_pil_for_the_same_draws(images):
    ops, u, cutout = draw_strong_params(len(images), torch.Generator().manual_seed(5))
    expected = by_pil(images, lambda img, i: RandAugment.apply(img, ops[i].tolist(), u[i].tolist(),
                                                               tuple(cutout[i].tolist())))
    assert torch.equal(randaugment_on_device(nchw(images), ops, u, cutout), expected)


def test_cutout_corner_follows_the_official_numpy_uniform_on_one_to_width():
    blank = torch.zeros(4000, 3, 32, 32, dtype=torch.uint8)
    draws = torch.rand(4000, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    draws[:, 0] = 1e-6  # a tiny side: one pixel at (int(y0), int(x0)), x0 from numpy's uniform(32) on (1, 32]
    cut = (cutout_on_device(blank, draws)[:, 0] == CUTOUT_FILL[0]).flatten(1).float()
    assert torch.equal(cut.sum(1), torch.ones(4000))
    rows, cols = cut.argmax(1) // 32, cut.argmax(1) % 32
    assert rows.min() >= 1 and cols.min() >= 1  # never row or column 0: uniform on 1..31, not on 0..31
    assert chi_square_uniform(cols.numpy() - 1, 31) < 70 and chi_square_uniform(rows.numpy() - 1, 31) < 70


# ---- the same law -------------------------------------------------------------------------------------------------

def chi_square_uniform(values, bins):
    counts = np.bincount(np.asarray(values), minlength=bins)
    expected = len(values) / bins
    return ((counts - expected) ** 2 / expected).sum()


def test_both_paths_draw_ops_uniformly_with_replacement_and_magnitudes_uniformly():
    n = 7000
    torch.manual_seed(0)
    augment = RandAugment()
    pil_draws = [augment.draw() for _ in range(n)]
    pil_ops = np.array([ops for ops, _, _ in pil_draws])
    pil_u = np.array([u + list(cut) for _, u, cut in pil_draws])
    ops, u, cutout = draw_strong_params(n, torch.Generator().manual_seed(0))
    for draws in (pil_ops, ops.numpy()):
        assert draws.shape == (n, 2)
        for column in range(2):
            assert chi_square_uniform(draws[:, column], len(OPS)) < 40  # 13 degrees of freedom: p ~ 1e-4
        assert abs((draws[:, 0] == draws[:, 1]).mean() - 1 / len(OPS)) < 0.015  # with replacement
    for uniforms in (pil_u, torch.cat([u, cutout], 1).numpy()):
        assert np.abs(uniforms.mean(0) - 0.5).max() < 0.015 and uniforms.min() >= 0 and uniforms.max() < 1


def denormalised(batch, mean, std):
    """float [N, C, H, W] normalised -> uint8 pixels."""
    mean, std = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return torch.round((batch * std + mean) * 255).clamp(0, 255).to(torch.uint8)


def per_sample_statistics(views):
    """[N, S]: per image the mean pixel, the fractions of black, of white and of Cutout-coloured pixels, and the
    mean of each 8x8 block (16) of the image."""
    x = views.float()
    fill = torch.tensor(CUTOUT_FILL).view(1, 3, 1, 1)
    stats = [x.mean((1, 2, 3)), (views == 0).float().mean((1, 2, 3)), (views == 255).float().mean((1, 2, 3)),
             (views == fill).all(1).float().mean((1, 2))]
    blocks = x.mean(1).reshape(-1, 4, 8, 4, 8).mean((2, 4)).flatten(1)
    return torch.cat([torch.stack(stats, 1), blocks], 1).double()


def assert_same_means(a, b, sigmas=5.0):
    """Every statistic's mean agrees between the two samples [N, S] within `sigmas` standard errors."""
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()
    z = (a.mean(0) - b.mean(0)).abs() / se.clamp(min=1e-12)
    assert z.max() < sigmas, z


@pytest.mark.skipif(not HAVE_FASHION, reason="Debian package dataset-fashion-mnist not installed")
def test_pil_pipeline_and_device_path_give_the_same_law_on_fashion_mnist():
    base = load_fashion_mnist("/nonexistent", train=True)[0][:300]
    repeats = 6
    torch.manual_seed(0)
    transform = strong_transform(FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    pil = denormalised(torch.stack([transform(Image.fromarray(img)) for img in base for _ in range(repeats)]),
                       FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    device = strong_views_on_device(nchw(np.repeat(base, repeats, axis=0)), torch.Generator().manual_seed(0))
    stats_pil, stats_device = per_sample_statistics(pil), per_sample_statistics(device)
    assert stats_pil[:, 3].mean() > 0.05  # Cutout is there
    assert_same_means(stats_pil, stats_device)
    uncropped = strong_views_on_device(nchw(np.repeat(base, repeats, axis=0)),
                                            torch.Generator().manual_seed(1), crop_flip=False)
    with pytest.raises(AssertionError):  # the comparison sees a missing crop
        assert_same_means(stats_pil, per_sample_statistics(uncropped))


def test_device_crop_and_flip_are_uniform_zero_padded_crops():
    coded = torch.arange(32 * 32, dtype=torch.int64).reshape(1, 1, 32, 32) % 251 + 1
    x = coded.expand(2000, 3, 32, 32).to(torch.uint8).contiguous()
    out = random_crop_flip(x, torch.Generator().manual_seed(0), 4).long()
    padded = torch.nn.functional.pad(x[0].long(), (4, 4, 4, 4))
    offsets, flips = [], []
    for sample in out[:400]:
        found = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                 if torch.equal(sample, (lambda c: c.flip(2) if flip else c)(padded[:, dy:dy + 32, dx:dx + 32]))]
        assert len(found) == 1
        offsets.append(found[0][0] * 9 + found[0][1])
        flips.append(found[0][2])
    assert chi_square_uniform(offsets, 81) < 140 and abs(np.mean(flips) - 0.5) < 0.1


# ---- determinism, API ---------------------------------------------------------------------------------------------

def test_device_views_are_deterministic_for_a_seed_and_differ_between_seeds(images):
    x = nchw(images)
    first = strong_views_on_device(x, torch.Generator().manual_seed(11))
    assert torch.equal(first, strong_views_on_device(x, torch.Generator().manual_seed(11)))
    assert not torch.equal(first, strong_views_on_device(x, torch.Generator().manual_seed(12)))
    generator = torch.Generator().manual_seed(11)
    strong_views_on_device(x, generator)
    assert not torch.equal(first, strong_views_on_device(x, generator))  # the generator advances
    assert first.shape == x.shape and first.dtype == torch.uint8
    with pytest.raises(ValueError, match="uint8"):
        strong_views_on_device(x.float(), torch.Generator())


def test_magnitude_ranges_are_the_official_ones():
    assert dict(zip(OPS, RANGES)) == {
        "AutoContrast": (0, 1), "Brightness": (0.05, 0.95), "Color": (0.05, 0.95), "Contrast": (0.05, 0.95),
        "Equalize": (0, 1), "Identity": (0, 1), "Posterize": (4, 8), "Rotate": (-30, 30), "Sharpness": (0.05, 0.95),
        "ShearX": (-0.3, 0.3), "ShearY": (-0.3, 0.3), "Solarize": (0, 256), "TranslateX": (-0.3, 0.3),
        "TranslateY": (-0.3, 0.3)}
    assert CUTOUT_FILL == (125, 123, 114)


@pytest.mark.parametrize("with_index", [False, True])
def test_two_view_dataset_gives_batch_dicts_with_independent_views(with_index):
    images, labels = synthetic_images(10), np.arange(10) % 3
    dataset = TwoViewDataset(images, labels, cifar100.train_transform(), strong_transform(), with_index=with_index)
    item = dataset[4]
    assert list(item) == ["images", "targets"] + (["index"] if with_index else []) + ["images_strong"]
    assert item["images"].shape == item["images_strong"].shape == (3, 32, 32) and item["targets"] == 1
    torch.manual_seed(0)
    items = next(iter(DataLoader(dataset, batch_size=10)))
    batch = Batch.from_loader(items, "cpu")
    assert batch.images.shape == batch.images_strong.shape == (10, 3, 32, 32)
    assert batch.targets.tolist() == labels.tolist() and batch.targets.dtype == torch.int64
    assert (batch.index.tolist() == list(range(10))) if with_index else batch.index is None
    assert not torch.equal(batch.images, batch.images_strong)
