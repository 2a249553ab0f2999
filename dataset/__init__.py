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
from dataset.contrast import ContrastCollate, ContrastSampler
from dataset.gpu_loader import GpuResidentLoader
from helper.errors import UserError

DATASETS = ('cifar100', 'fashion_mnist', 'imagenet')
_ARRAY_DATASETS = {  # name -> (load(data_root, train), mean, std, num_classes)
    'cifar100': (cifar100.load_cifar100, cifar100.CIFAR100_MEAN, cifar100.CIFAR100_STD, cifar100.NUM_CLASSES),
    'fashion_mnist': (fashion_mnist.load_fashion_mnist, fashion_mnist.FASHION_MNIST_MEAN,
                      fashion_mnist.FASHION_MNIST_STD, fashion_mnist.NUM_CLASSES),
}
_DEFAULTS = dict(dataset='cifar100', data_root='./data', batch_size=64, num_workers=8, subset=0, gpu_loader=False,
                 device='cpu', seed=0, nce_k=16384, mode='exact', percent=1.0, distributed=False)


@dataclass
class DataBundle:
    train_loader: Iterable  # (images, targets[, index[, contrast_idx [B, K+1]]])
    val_loader: Iterable  # (images, targets)
    n_data: int  # training samples (after --subset); size of CRD's memory bank
    num_classes: int
    input_size: int  # side of the square 3-channel input images (32 or 224)
    train_sampler: Optional[object]  # when not None, call train_sampler.set_epoch(epoch) before each epoch


def build_loaders(opt, with_index=False, with_contrast=False, drop_last=False):
    """Train/val loaders for opt.dataset -> DataBundle.

    opt attributes (missing ones take _DEFAULTS): dataset, data_root, batch_size (per process),
    num_workers, subset, gpu_loader, device, seed, distributed, and nce_k, mode, percent (contrast only).
    subset > 0 keeps `subset` training and max(1, subset // 2) validation samples, taken class-balanced
    in dataset order (sample i of every class before sample i + 1 of any class).
    distributed: train uses DistributedSampler (padded to equal shares, reshuffled by set_epoch); val
    uses ShardSampler, which does not pad, so every validation sample is counted exactly once.
    drop_last applies to training only. with_contrast implies with_index.
    """
    name = _option(opt, 'dataset')
    if name not in DATASETS:
        raise UserError(f"unknown --dataset '{name}'; choose one of {', '.join(DATASETS)}")
    with_index = with_index or with_contrast
    if name == 'imagenet':
        return _imagenet_bundle(opt, with_index, with_contrast, drop_last)
    return _array_bundle(opt, name, with_index, with_contrast, drop_last)


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


def _array_bundle(opt, name, with_index, with_contrast, drop_last):
    load, mean, std, num_classes = _ARRAY_DATASETS[name]
    subset = _option(opt, 'subset')
    train_x, train_y = _take(*load(_option(opt, 'data_root'), True), subset)
    val_x, val_y = _take(*load(_option(opt, 'data_root'), False), max(1, subset // 2) if subset > 0 else 0)
    contrast = _contrast_sampler(opt, train_y) if with_contrast else None
    input_size = train_x.shape[1]
    if _option(opt, 'gpu_loader'):
        rank, world_size = _rank_and_world_size(opt)
        shared = dict(batch_size=_option(opt, 'batch_size'), mean=mean, std=std, device=_option(opt, 'device'),
                      rank=rank, world_size=world_size)
        train_loader = GpuResidentLoader(train_x, train_y, train=True, seed=_option(opt, 'seed'), drop_last=drop_last,
                                         with_index=with_index, contrast=contrast, **shared)
        val_loader = GpuResidentLoader(val_x, val_y, train=False, **shared)
        return DataBundle(train_loader, val_loader, len(train_y), num_classes, input_size, train_loader)
    train_set = cifar100.ImageArrayDataset(train_x, train_y, cifar100.train_transform(mean, std),
                                           with_index=with_index)
    val_set = cifar100.ImageArrayDataset(val_x, val_y, cifar100.test_transform(mean, std))
    return _dataloader_bundle(opt, train_set, val_set, contrast, drop_last, num_classes, input_size)


def _imagenet_bundle(opt, with_index, with_contrast, drop_last):
    if _option(opt, 'gpu_loader'):
        raise UserError('--gpu_loader supports cifar100 and fashion_mnist only; drop it for --dataset imagenet')
    folder = imagenet.find_imagenet(_option(opt, 'data_root'))
    train_class = imagenet.ImageFolderInstance if with_index else datasets.ImageFolder
    train_set = train_class(os.path.join(folder, 'train'), transform=imagenet.train_transform())
    val_set = datasets.ImageFolder(os.path.join(folder, 'val'), transform=imagenet.test_transform())
    subset = _option(opt, 'subset')
    if subset > 0:
        _keep_samples(train_set, class_balanced_subset(train_set.targets, subset))
        _keep_samples(val_set, class_balanced_subset(val_set.targets, max(1, subset // 2)))
    contrast = _contrast_sampler(opt, train_set.targets) if with_contrast else None
    return _dataloader_bundle(opt, train_set, val_set, contrast, drop_last, len(train_set.classes), 224)


def _dataloader_bundle(opt, train_set, val_set, contrast, drop_last, num_classes, input_size):
    """torch DataLoaders (workers do decoding, augmentation and contrast sampling)."""
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
    train_loader = DataLoader(train_set, shuffle=train_sampler is None, sampler=train_sampler, drop_last=drop_last,
                              collate_fn=ContrastCollate(contrast) if contrast is not None else None,
                              generator=torch.Generator().manual_seed(_option(opt, 'seed')), **shared)
    val_loader = DataLoader(val_set, shuffle=False, sampler=val_sampler, persistent_workers=num_workers > 0,
                            **shared)
    return DataBundle(train_loader, val_loader, len(train_set), num_classes, input_size, train_sampler)


def _contrast_sampler(opt, labels):
    return ContrastSampler(labels, _option(opt, 'nce_k'), _option(opt, 'mode'), _option(opt, 'percent'),
                           seed=_option(opt, 'seed'))


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
