"""Data loading: `build_loaders(opt)` is the one entry point of train_teacher.py / train_student.py."""
import os
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler
from torch.utils.data.distributed import DistributedSampler
from torchvision import datasets

from dataset import cifar100, fashion_mnist, imagenet
from dataset.gpu_loader import GpuResidentLoader
from helper.errors import UserError

DATASETS = ('cifar100', 'fashion_mnist', 'imagenet')
LOADERS = ('auto', 'device', 'torch')
_ARRAY_DATASETS = {  # name -> (load(data_root, train), mean, std, num_classes)
    'cifar100': (cifar100.load_cifar100, cifar100.CIFAR100_MEAN, cifar100.CIFAR100_STD, cifar100.NUM_CLASSES),
    'fashion_mnist': (fashion_mnist.load_fashion_mnist, fashion_mnist.FASHION_MNIST_MEAN,
                      fashion_mnist.FASHION_MNIST_STD, fashion_mnist.NUM_CLASSES),
}
_DEFAULTS = dict(dataset='cifar100', data_root='./data', batch_size=64, num_workers=8, subset=0, test_subset=0,
                 loader='auto', gpu_loader=False, device='cpu', seed=0, distributed=False)


@dataclass
class DataBundle:
    train_loader: Iterable  # (images, targets[, index]), or dicts with images_strong (strong_view)
    val_loader: Iterable  # (images, targets)
    n_data: int  # training samples (after --subset); size of CRD's memory bank
    num_classes: int
    input_size: int  # side of the square 3-channel input images (32 or 224)
    train_sampler: Optional[object]  # when not None, call train_sampler.set_epoch(epoch) before each epoch
    train_targets: Optional[torch.Tensor] = None  # [n_data] int64 labels of the training samples
    n_val: int = 0  # validation samples
    loader: str = 'torch'  # 'device' (the dataset lives on the training device) or 'torch' (DataLoader workers)


def build_loaders(opt, with_index=False, strong_view=False):
    """Train/val loaders for opt.dataset -> DataBundle.

    opt attributes (missing ones take _DEFAULTS): dataset, data_root, batch_size (per process), num_workers,
    subset, test_subset, loader (auto: the device-resident loader for cifar100/fashion_mnist, torch's DataLoader
    for imagenet; gpu_loader=True is the old spelling of loader=device), device, seed, distributed.
    subset > 0 keeps `subset` training samples and test_subset > 0 keeps that many validation samples (the whole
    test set otherwise), taken class-balanced in dataset order (sample i of every class before i + 1 of any class).
    distributed: train uses DistributedSampler (padded to equal shares, reshuffled by set_epoch); val uses
    ShardSampler, which does not pad, so every validation sample is counted exactly once.
    with_index: batches carry dataset indices; strong_view: a second, strongly augmented view of every image
    (batches are dicts {images, targets, index?, images_strong}). Training batches are never dropped: a method
    that needs full batches skips the last partial one itself.
    """
    name = _option(opt, 'dataset')
    if name not in DATASETS:
        raise UserError(f"unknown --dataset '{name}'; choose one of {', '.join(DATASETS)}")
    for flag in ('subset', 'test_subset'):
        if _option(opt, flag) < 0:
            raise UserError(f"--{flag} must be >= 0 (0 keeps every sample), got {_option(opt, flag)}")
    if name == 'imagenet':
        return _imagenet_bundle(opt, with_index, strong_view)
    return _array_bundle(opt, name, with_index, strong_view)


def loader_kind(opt, dataset=None):
    """'device' or 'torch' for the options: --loader, with --gpu_loader meaning device."""
    kind = _option(opt, 'loader')
    if kind not in LOADERS:
        raise UserError(f"unknown --loader '{kind}'; choose one of {', '.join(LOADERS)}")
    if _option(opt, 'gpu_loader'):
        kind = 'device'
    if kind == 'auto':
        kind = 'torch' if (dataset or _option(opt, 'dataset')) == 'imagenet' else 'device'
    return kind


def class_balanced_subset(labels, n):
    """The first n indices in round-robin class order (sample i of every class before i + 1), sorted."""
    labels = np.asarray(labels)
    by_class = np.argsort(labels, kind='stable')
    first_of_class = np.searchsorted(labels[by_class], labels[by_class])
    rank_in_class = np.empty(len(labels), dtype=np.int64)
    rank_in_class[by_class] = np.arange(len(labels)) - first_of_class
    return np.sort(np.lexsort((np.arange(len(labels)), rank_in_class))[:n])


class ShardSampler(Sampler):
    """Indices rank, rank + world_size, ...: a partition of the dataset over ranks, without padding."""

    def __init__(self, dataset, num_replicas, rank):
        self.indices = range(rank, len(dataset), num_replicas)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def _option(opt, name):
    return getattr(opt, name, _DEFAULTS[name])


def _array_bundle(opt, name, with_index, strong_view):
    load, mean, std, num_classes = _ARRAY_DATASETS[name]
    train_x, train_y = _take(*load(_option(opt, 'data_root'), True), _option(opt, 'subset'))
    val_x, val_y = _take(*load(_option(opt, 'data_root'), False), _option(opt, 'test_subset'))
    input_size = train_x.shape[1]
    targets = torch.as_tensor(np.asarray(train_y), dtype=torch.int64)
    if loader_kind(opt, name) == 'device':
        rank, world_size = _rank_and_world_size(opt)
        shared = dict(batch_size=_option(opt, 'batch_size'), mean=mean, std=std, device=_option(opt, 'device'),
                      rank=rank, world_size=world_size)
        train_loader = GpuResidentLoader(train_x, train_y, train=True, seed=_option(opt, 'seed'),
                                         with_index=with_index, strong_view=strong_view, **shared)
        val_loader = GpuResidentLoader(val_x, val_y, train=False, **shared)
        return DataBundle(train_loader, val_loader, len(train_y), num_classes, input_size, train_loader, targets,
                          len(val_y), 'device')
    if strong_view:
        from dataset.strong_aug import TwoViewDataset, strong_transform
        train_set = TwoViewDataset(train_x, train_y, cifar100.train_transform(mean, std),
                                   strong_transform(mean, std), with_index=with_index)
    else:
        train_set = cifar100.ImageArrayDataset(train_x, train_y, cifar100.train_transform(mean, std),
                                               with_index=with_index)
    val_set = cifar100.ImageArrayDataset(val_x, val_y, cifar100.test_transform(mean, std))
    return _dataloader_bundle(opt, train_set, val_set, num_classes, input_size, targets)


def _imagenet_bundle(opt, with_index, strong_view):
    if loader_kind(opt, 'imagenet') == 'device':
        raise UserError('--loader device (--gpu_loader) supports cifar100 and fashion_mnist only; use --loader torch '
                        'for --dataset imagenet')
    if strong_view:
        raise UserError('a method that needs a strong view (mlkd) supports cifar100 and fashion_mnist only')
    folder = imagenet.find_imagenet(_option(opt, 'data_root'))
    train_class = imagenet.ImageFolderInstance if with_index else datasets.ImageFolder
    train_set = train_class(os.path.join(folder, 'train'), transform=imagenet.train_transform())
    val_set = datasets.ImageFolder(os.path.join(folder, 'val'), transform=imagenet.test_transform())
    if _option(opt, 'subset') > 0:
        _keep_samples(train_set, class_balanced_subset(train_set.targets, _option(opt, 'subset')))
    if _option(opt, 'test_subset') > 0:
        _keep_samples(val_set, class_balanced_subset(val_set.targets, _option(opt, 'test_subset')))
    targets = torch.as_tensor(train_set.targets, dtype=torch.int64)
    return _dataloader_bundle(opt, train_set, val_set, len(train_set.classes), 224, targets)


def _dataloader_bundle(opt, train_set, val_set, num_classes, input_size, targets):
    """torch DataLoaders (workers do decoding and augmentation)."""
    train_sampler = val_sampler = None
    if _option(opt, 'distributed'):
        rank, world_size = _rank_and_world_size(opt)
        train_sampler = DistributedSampler(train_set, world_size, rank, shuffle=True, seed=_option(opt, 'seed'))
        val_sampler = ShardSampler(val_set, world_size, rank)
    num_workers = _option(opt, 'num_workers')
    shared = dict(batch_size=_option(opt, 'batch_size'), num_workers=num_workers,
                  pin_memory=torch.device(_option(opt, 'device')).type == 'cuda')
    # Training workers are not persistent: each epoch's worker seeds then derive from the loader's
    # generator, which the trainer reseeds per epoch, so a resumed run replays augmentation exactly.
    train_loader = DataLoader(train_set, shuffle=train_sampler is None, sampler=train_sampler,
                              generator=torch.Generator().manual_seed(_option(opt, 'seed')), **shared)
    val_loader = DataLoader(val_set, shuffle=False, sampler=val_sampler, persistent_workers=num_workers > 0,
                            **shared)
    return DataBundle(train_loader, val_loader, len(train_set), num_classes, input_size, train_sampler, targets,
                      len(val_set), 'torch')


def _rank_and_world_size(opt):
    """(rank, world_size) of the initialised process group when opt.distributed, else (0, 1)."""
    if not _option(opt, 'distributed'):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _take(images, labels, n):
    if n <= 0:
        return images, labels
    keep = class_balanced_subset(labels, n)
    return images[keep], labels[keep]


def _keep_samples(folder_dataset, keep):
    """Restricts an ImageFolder to positions `keep` (indices stay dataset positions, as CRD needs)."""
    folder_dataset.samples = [folder_dataset.samples[i] for i in keep]
    folder_dataset.imgs = folder_dataset.samples
    folder_dataset.targets = [s[1] for s in folder_dataset.samples]
