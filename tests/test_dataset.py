import os
import types

import numpy as np
import pytest
import torch
from PIL import Image

import dataset.cifar100 as cifar100
from dataset import ShardSampler, build_loaders, class_balanced_subset
from dataset.contrast import ContrastSampler
from dataset.fashion_mnist import DEBIAN_FOLDER, FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from dataset.gpu_loader import GpuResidentLoader
from helper.errors import UserError
from tests.cifar_fixture import make_fake_cifar100

TRAIN_PER_CLASS, TEST_PER_CLASS = 5, 2


@pytest.fixture(scope='module')
def cifar_root(tmp_path_factory):
    return make_fake_cifar100(tmp_path_factory.mktemp('data'), TRAIN_PER_CLASS, TEST_PER_CLASS, seed=0)


def make_opt(**overrides):
    """Loader options; gpu_loader=True picks the device-resident loader, False torch's DataLoader."""
    opt = dict(dataset='cifar100', data_root='./data', batch_size=32, num_workers=0, subset=0, test_subset=0,
               gpu_loader=False, device='cpu', seed=0, distributed=False)
    opt.update(overrides)
    opt['loader'] = 'device' if opt.pop('gpu_loader') else 'torch'
    return types.SimpleNamespace(**opt)


def denormalise(images, mean, std):
    """float [..., 3, H, W] normalised -> uint8-valued int64 pixels."""
    mean = torch.tensor(mean).view(3, 1, 1)
    std = torch.tensor(std).view(3, 1, 1)
    return torch.round((images * std + mean) * 255).long()


# ---------------------------------------------------------------- CIFAR-100 files


def test_cifar_reader_returns_hwc_uint8_images_matching_the_chw_pickle_rows(cifar_root):
    images, labels = cifar100.load_cifar100(cifar_root, train=True)
    raw = cifar100._unpickle(os.path.join(cifar_root, 'cifar-100-python', 'train'))
    assert images.shape == (100 * TRAIN_PER_CLASS, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == raw[b'fine_labels']
    assert np.array_equal(images[7], raw[b'data'][7].reshape(3, 32, 32).transpose(1, 2, 0))
    assert np.bincount(labels).tolist() == [TRAIN_PER_CLASS] * 100


def test_missing_cifar_with_failing_download_raises_one_line_user_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError('<urlopen error [Errno -3]\nTemporary failure in name resolution>')

    monkeypatch.setattr(cifar100, 'download_and_extract_archive', offline)
    with pytest.raises(UserError) as caught:
        build_loaders(make_opt(data_root=str(tmp_path)))
    message = str(caught.value)
    assert '\n' not in message
    assert cifar100.CIFAR100_URL in message
    assert os.path.join(str(tmp_path), 'cifar-100-python') in message
    assert 'name resolution' in message


def test_unknown_dataset_raises_user_error_listing_choices():
    with pytest.raises(UserError, match='cifar100, fashion_mnist, imagenet'):
        build_loaders(make_opt(dataset='mnist'))


# ---------------------------------------------------------------- loaders


@pytest.mark.parametrize('gpu_loader', [False, True])
def test_train_batches_cover_every_position_once_with_matching_targets(cifar_root, gpu_loader):
    bundle = build_loaders(make_opt(data_root=cifar_root, gpu_loader=gpu_loader), with_index=True)
    _, labels = cifar100.load_cifar100(cifar_root, train=True)
    seen = []
    for images, targets, index in bundle.train_loader:
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
        assert targets.dtype == torch.int64 and index.dtype == torch.int64
        assert torch.equal(targets, torch.from_numpy(labels)[index])
        seen.append(index)
    assert sorted(torch.cat(seen).tolist()) == list(range(len(labels)))
    assert (bundle.n_data, bundle.num_classes, bundle.input_size) == (len(labels), 100, 32)
    assert len(bundle.train_loader) == -(-len(labels) // 32)


@pytest.mark.parametrize('gpu_loader', [False, True])
def test_training_keeps_the_short_last_batch_for_the_methods_to_skip(cifar_root, gpu_loader):
    bundle = build_loaders(make_opt(data_root=cifar_root, gpu_loader=gpu_loader, batch_size=64))
    sizes = [len(targets) for _, targets in bundle.train_loader]
    assert sizes == [64] * (500 // 64) + [500 % 64] and len(bundle.train_loader) == len(sizes)
    assert sum(len(targets) for _, targets in bundle.val_loader) == 100 * TEST_PER_CLASS
    assert torch.equal(bundle.train_targets, torch.from_numpy(cifar100.load_cifar100(cifar_root, True)[1]))


def test_the_default_loader_is_the_device_resident_one_for_cifar_and_torchs_for_imagenet():
    from dataset import loader_kind
    assert loader_kind(types.SimpleNamespace(loader='auto', dataset='cifar100')) == 'device'
    assert loader_kind(types.SimpleNamespace(loader='auto', dataset='fashion_mnist')) == 'device'
    assert loader_kind(types.SimpleNamespace(loader='auto', dataset='imagenet')) == 'torch'
    assert loader_kind(types.SimpleNamespace(loader='torch', dataset='cifar100', gpu_loader=True)) == 'device'


def test_val_batches_are_identical_on_both_paths_and_equal_the_test_transform(cifar_root):
    cpu = build_loaders(make_opt(data_root=cifar_root))
    gpu = build_loaders(make_opt(data_root=cifar_root, gpu_loader=True))
    images, labels = cifar100.load_cifar100(cifar_root, train=False)
    expected = torch.stack([cifar100.test_transform()(Image.fromarray(img)) for img in images])
    for loader in (cpu.val_loader, gpu.val_loader):
        got_images, got_targets = map(torch.cat, zip(*loader))
        assert torch.allclose(got_images, expected, atol=1e-6)
        assert got_targets.tolist() == labels.tolist()
        assert 0 <= got_targets.min() and got_targets.max() <= 99


def test_gpu_loader_epochs_are_reproducible_and_differ_between_epochs(cifar_root):
    first = build_loaders(make_opt(data_root=cifar_root, gpu_loader=True, seed=3), with_index=True)
    second = build_loaders(make_opt(data_root=cifar_root, gpu_loader=True, seed=3), with_index=True)
    first.train_sampler.set_epoch(5)
    second.train_sampler.set_epoch(5)
    batch_a, batch_b = next(iter(first.train_loader)), next(iter(second.train_loader))
    assert all(torch.equal(a, b) for a, b in zip(batch_a, batch_b))
    batch_next_epoch = next(iter(first.train_loader))  # __iter__ advanced to epoch 6
    assert not torch.equal(batch_a[2], batch_next_epoch[2])


def test_subset_keeps_class_balanced_first_samples_and_the_whole_test_set(cifar_root):
    bundle = build_loaders(make_opt(data_root=cifar_root, subset=200, gpu_loader=True))
    assert bundle.n_data == 200
    assert torch.bincount(bundle.train_loader.labels).tolist() == [2] * 100
    assert len(bundle.val_loader.labels) == 100 * TEST_PER_CLASS == bundle.n_val
    small_test = build_loaders(make_opt(data_root=cifar_root, subset=200, test_subset=100, gpu_loader=True))
    assert torch.bincount(small_test.val_loader.labels).tolist() == [1] * 100
    with pytest.raises(UserError, match='--subset'):
        build_loaders(make_opt(data_root=cifar_root, subset=-5))
    labels = np.array([0, 0, 0, 1, 2, 2, 1, 0])
    assert class_balanced_subset(labels, 4).tolist() == [0, 1, 3, 4]


def test_shards_partition_every_sample_exactly_once(cifar_root):
    images, labels = cifar100.load_cifar100(cifar_root, train=False)
    val_indices = []
    train_indices = []
    for rank in range(3):
        val_indices += list(ShardSampler(labels, 3, rank))
        train = GpuResidentLoader(images, labels, 16, (0, 0, 0), (1, 1, 1), 'cpu', with_index=True,
                                  rank=rank, world_size=3)
        train_indices += torch.cat([index for _, _, index in train]).tolist()
    assert sorted(val_indices) == list(range(len(labels)))
    assert len(train_indices) == len(set(train_indices)) == len(labels) - len(labels) % 3


# ---------------------------------------------------------------- augmentation: CPU path == GPU-resident path


def coded_image():
    """uint8 [32, 32, 3]: channel 0 encodes the row, channel 1 the column (never 0), channel 2 constant."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing='ij')
    return np.stack([rows * 7 + 1, cols * 7 + 1, np.full_like(rows, 128)], axis=2).astype(np.uint8)


def crop_and_flip_of(pixels):
    """[3, 32, 32] pixels of an augmented coded_image -> (row offset, column offset, flipped) in the padded image."""
    source_row = (int(pixels[0, 16, 16]) - 1) // 7
    source_col = (int(pixels[1, 16, 16]) - 1) // 7
    flipped = int(pixels[1, 16, 17]) < int(pixels[1, 16, 16])
    return source_row - 12, source_col - (11 if flipped else 12), flipped


def augmented_by_cpu_transform(n):
    torch.manual_seed(0)
    transform = cifar100.train_transform()
    image = Image.fromarray(coded_image())
    return torch.stack([transform(image) for _ in range(n)])


def augmented_by_gpu_loader(n):
    images = np.repeat(coded_image()[None], n, axis=0)
    loader = GpuResidentLoader(images, np.zeros(n), 500, cifar100.CIFAR100_MEAN, cifar100.CIFAR100_STD, 'cpu')
    return torch.cat([batch for batch, _ in loader])


@pytest.fixture(scope='module')
def augmented():
    n = 2000
    return {'cpu': augmented_by_cpu_transform(n), 'gpu': augmented_by_gpu_loader(n)}


@pytest.mark.parametrize('path', ['cpu', 'gpu'])
def test_each_augmented_image_is_a_flipped_or_not_crop_of_the_zero_padded_image(augmented, path):
    padded = torch.from_numpy(np.pad(coded_image(), ((4, 4), (4, 4), (0, 0)))).permute(2, 0, 1).long()
    pixels = denormalise(augmented[path][:300], cifar100.CIFAR100_MEAN, cifar100.CIFAR100_STD)
    for sample in pixels:
        dy, dx, flipped = crop_and_flip_of(sample)
        expected = padded[:, dy:dy + 32, dx:dx + 32]
        assert torch.equal(sample, expected.flip(2) if flipped else expected)


@pytest.mark.parametrize('path', ['cpu', 'gpu'])
def test_crop_offsets_are_uniform_over_9x9_and_half_the_images_are_flipped(augmented, path):
    pixels = denormalise(augmented[path], cifar100.CIFAR100_MEAN, cifar100.CIFAR100_STD)
    draws = [crop_and_flip_of(sample) for sample in pixels]
    counts = np.zeros((9, 9))
    for dy, dx, _ in draws:
        counts[dy, dx] += 1
    expected = len(draws) / 81
    chi_square = ((counts - expected) ** 2 / expected).sum()
    assert chi_square < 140  # 80 degrees of freedom: p ~ 1e-4
    assert abs(np.mean([flipped for _, _, flipped in draws]) - 0.5) < 0.05


def test_per_pixel_mean_and_std_agree_between_cpu_and_gpu_paths(augmented):
    cpu, gpu = augmented['cpu'], augmented['gpu']
    assert (cpu.mean(0) - gpu.mean(0)).abs().max() < 0.15
    assert (cpu.std(0) - gpu.std(0)).abs().max() < 0.15


# ---------------------------------------------------------------- contrast sampling

SMALL_LABELS = np.repeat(np.arange(10), 30)  # pool of 270 negatives per class


@pytest.mark.parametrize('labels, k', [(SMALL_LABELS, 100), (np.repeat(np.arange(2), 1000), 10)],
                         ids=['random-keys', 'first-distinct-draws'])
@pytest.mark.parametrize('mode', ['exact', 'relax'])
def test_contrast_rows_have_valid_positive_and_distinct_other_class_negatives(labels, k, mode):
    labels = np.random.default_rng(1).permutation(labels)
    sampler = ContrastSampler(labels, k, mode)
    index = torch.arange(0, len(labels), 7)
    targets = torch.from_numpy(labels)[index]
    contrast = sampler.sample(targets, index, torch.Generator().manual_seed(0))
    labels = torch.from_numpy(labels)
    assert contrast.shape == (len(index), k + 1) and contrast.dtype == torch.int64
    if mode == 'exact':
        assert torch.equal(contrast[:, 0], index)
    else:
        assert not torch.equal(contrast[:, 0], index)
    assert torch.equal(labels[contrast[:, 0]], targets)
    assert (labels[contrast[:, 1:]] != targets[:, None]).all()
    assert all(len(set(row.tolist())) == k for row in contrast[:, 1:])


@pytest.mark.parametrize('labels, k', [(SMALL_LABELS, 100), (np.repeat(np.arange(2), 1000), 10)],
                         ids=['random-keys', 'first-distinct-draws'])
def test_every_other_class_sample_is_an_equally_likely_negative(labels, k):
    sampler = ContrastSampler(labels, k)
    assert sampler._method == ('first_draws' if k == 10 else 'keys')
    rows = 20000 if k == 10 else 2000
    targets = torch.zeros(rows, dtype=torch.int64)
    negatives = sampler.sample(targets, torch.zeros_like(targets), torch.Generator().manual_seed(0))[:, 1:]
    pool = np.flatnonzero(labels != 0)
    counts = torch.bincount(negatives.flatten(), minlength=len(labels)).numpy()
    assert counts[labels == 0].sum() == 0
    expected = rows * k / len(pool)
    chi_square = ((counts[pool] - expected) ** 2 / expected).sum()
    degrees = len(pool) - 1
    assert chi_square < degrees + 5 * np.sqrt(2 * degrees)


def test_negatives_repeat_only_when_k_exceeds_the_pool():
    labels = np.array([0, 0, 1, 1, 1, 2])
    contrast = ContrastSampler(labels, 8).sample(torch.tensor([1, 0]), torch.tensor([2, 0]))
    assert contrast.shape == (2, 9)
    assert set(contrast[0, 1:].tolist()) <= {0, 1, 5} and set(contrast[1, 1:].tolist()) <= {2, 3, 4, 5}


def test_percent_restricts_each_class_to_a_fixed_fraction_of_its_negatives():
    sampler = ContrastSampler(SMALL_LABELS, 20, percent=0.25, seed=4)
    targets = torch.full((500,), 3)
    negatives = sampler.sample(targets, torch.arange(90, 590) % 300)[:, 1:]
    used = set(negatives.flatten().tolist())
    assert len(used) == int(270 * 0.25)
    assert all(SMALL_LABELS[i] != 3 for i in used)


def test_bad_mode_and_percent_are_user_errors():
    with pytest.raises(UserError, match='--mode'):
        ContrastSampler(SMALL_LABELS, 4, mode='strict')
    with pytest.raises(UserError, match='--percent'):
        ContrastSampler(SMALL_LABELS, 4, percent=1.5)


@pytest.mark.parametrize('gpu_loader', [False, True])
def test_contrast_draws_on_the_builders_batches_follow_the_exact_rules(cifar_root, gpu_loader):
    bundle = build_loaders(make_opt(data_root=cifar_root, gpu_loader=gpu_loader), with_index=True)
    labels = bundle.train_targets
    sampler = ContrastSampler(labels, 32)
    images, targets, index = next(iter(bundle.train_loader))
    contrast = sampler.sample(targets, index, torch.Generator().manual_seed(0))
    assert contrast.shape == (32, 33)
    assert torch.equal(contrast[:, 0], index)
    assert (labels[contrast[:, 1:]] != targets[:, None]).all()
    again = sampler.sample(targets, index, torch.Generator().manual_seed(0))
    assert torch.equal(contrast, again)  # the method's own generator alone decides the draw


# ---------------------------------------------------------------- RepDistiller-compatible API


def test_repdistiller_cifar_functions_return_their_tuples(cifar_root):
    train_loader, val_loader, n_data = cifar100.get_cifar100_dataloaders(
        batch_size=20, num_workers=0, is_instance=True, data_root=cifar_root)
    assert n_data == 500 and len(next(iter(train_loader))) == 3 and val_loader.batch_size == 10
    assert len(cifar100.get_cifar100_dataloaders(batch_size=20, num_workers=0, data_root=cifar_root)) == 2
    train_loader, _, n_data = cifar100.get_cifar100_dataloaders_sample(
        batch_size=20, num_workers=0, k=16, mode='relax', data_root=cifar_root)
    images, targets, index, sample_idx = next(iter(train_loader))
    assert sample_idx.shape == (20, 17) and n_data == 500


def test_instance_sample_item_has_own_index_first_then_k_negatives(cifar_root):
    dataset = cifar100.CIFAR100InstanceSample(cifar_root, transform=cifar100.test_transform(), k=16)
    img, target, index, sample_idx = dataset[42]
    assert img.shape == (3, 32, 32) and index == 42 and sample_idx.shape == (17,) and sample_idx[0] == 42
    assert all(dataset.targets[i] != target for i in sample_idx[1:])


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FOLDER), reason='Debian package dataset-fashion-mnist not installed')
def test_fashion_mnist_from_debian_files_is_padded_to_3x32x32_with_matching_mean_std(tmp_path):
    train_images, train_labels = load_fashion_mnist(str(tmp_path), train=True)
    test_images, test_labels = load_fashion_mnist(str(tmp_path), train=False)
    assert train_images.shape == (60000, 32, 32, 3) and test_images.shape == (10000, 32, 32, 3)
    assert sorted(set(train_labels.tolist())) == list(range(10)) and len(test_labels) == 10000
    assert train_images[:, :2].max() == 0 and np.array_equal(train_images[..., 0], train_images[..., 2])
    gray = train_images[..., 0] / 255.0
    assert abs(gray.mean() - FASHION_MNIST_MEAN[0]) < 1e-4 and abs(gray.std() - FASHION_MNIST_STD[0]) < 1e-4
    bundle = build_loaders(make_opt(dataset='fashion_mnist', data_root=str(tmp_path), subset=100, gpu_loader=True))
    images, targets = next(iter(bundle.train_loader))
    assert images.shape == (32, 3, 32, 32) and bundle.num_classes == 10 and bundle.n_data == 100


# ---------------------------------------------------------------- ImageNet


def make_image_folder(root, classes=3, per_class=2):
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for c in range(classes):
            folder = os.path.join(root, 'imagenet', split, f'n0{c}')
            os.makedirs(folder)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(40 + 10 * i, 60, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f'img{i}.{"png" if i else "jpg"}'))


def test_imagenet_folder_gives_224_crops_with_index(tmp_path):
    make_image_folder(str(tmp_path))
    bundle = build_loaders(make_opt(dataset='imagenet', data_root=str(tmp_path), batch_size=4), with_index=True)
    images, targets, index = next(iter(bundle.train_loader))
    assert images.shape == (4, 3, 224, 224)
    assert torch.equal(bundle.train_targets[index], targets)
    assert (bundle.n_data, bundle.num_classes, bundle.input_size) == (6, 3, 224)
    val_images, _ = next(iter(bundle.val_loader))
    assert val_images.shape == (4, 3, 224, 224)


def test_missing_imagenet_names_both_candidate_folders(tmp_path):
    with pytest.raises(UserError) as caught:
        build_loaders(make_opt(dataset='imagenet', data_root=str(tmp_path)))
    assert os.path.join(str(tmp_path), 'imagenet') in str(caught.value) and '\n' not in str(caught.value)


def test_gpu_loader_ranks_share_the_order_but_not_the_augmentation():
    import numpy as np
    from dataset.cifar100 import CIFAR100_MEAN, CIFAR100_STD
    from dataset.gpu_loader import GpuResidentLoader
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(64) % 10
    ranks = [GpuResidentLoader(images, labels, 8, CIFAR100_MEAN, CIFAR100_STD, "cpu", seed=5, with_index=True,
                               rank=r, world_size=2) for r in (0, 1)]
    (_, _, i0), (_, _, i1) = next(iter(ranks[0])), next(iter(ranks[1]))
    assert set(i0.tolist()).isdisjoint(i1.tolist())  # one shared permutation, split between ranks
    # identical source images on both ranks would get identical crops if the generators were shared
    twin = [GpuResidentLoader(np.repeat(images[:1], 64, 0), labels, 8, CIFAR100_MEAN, CIFAR100_STD, "cpu", seed=5,
                              rank=r, world_size=2) for r in (0, 1)]
    assert not torch.equal(next(iter(twin[0]))[0], next(iter(twin[1]))[0])
