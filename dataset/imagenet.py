"""ImageNet as torchvision ImageFolder trees, with RepDistiller's dataset classes and loaders.

Layout: `<data_root>/imagenet/{train,val}/<class>/<image>` or `<data_root>/{train,val}/<class>/<image>`
(checked in that order); val must be sorted into class folders like train.
"""
import os

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from dataset.contrast import ContrastCollate, ContrastSampler
from helper.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PIN = torch.cuda.is_available()  # RepDistiller pins always; pinning without CUDA only warns


def train_transform():
    return transforms.Compose([
        transforms.RandomResizedCrop(224),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def test_transform():
    return transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def find_imagenet(data_root):
    """-> the folder holding train/ and val/; UserError naming both candidates when neither does."""
    candidates = [os.path.join(data_root, 'imagenet'), data_root]
    for folder in candidates:
        if all(os.path.isdir(os.path.join(folder, split)) for split in ('train', 'val')):
            return folder
    raise UserError(f"ImageNet not found: no train/ and val/ class folders in {' or '.join(candidates)}; "
                    'pass --data_root')


class ImageFolderInstance(datasets.ImageFolder):
    """ImageFolder returning (img, target, index)."""

    def __getitem__(self, index):
        img, target = super().__getitem__(index)
        return img, target, index


class ImageFolderSample(ImageFolderInstance):
    """ImageFolder returning (img, target, index, sample_idx [k+1]) when is_sample, for CRD.

    Unlike RepDistiller (negatives with replacement), negatives are drawn without replacement."""

    def __init__(self, root, transform=None, target_transform=None, is_sample=False, k=4096, mode='exact'):
        super().__init__(root=root, transform=transform, target_transform=target_transform)
        self.k = k
        self.is_sample = is_sample
        self.contrast = ContrastSampler(self.targets, k, mode) if is_sample else None

    def __getitem__(self, index):
        img, target, index = super().__getitem__(index)
        if not self.is_sample:
            return img, target, index
        return img, target, index, self.contrast.sample([self.targets[index]], [index])[0].numpy()


def get_imagenet_dataloader(dataset='imagenet', batch_size=128, num_workers=16, is_instance=False,
                            data_root='./data'):
    """RepDistiller's loaders -> (train_loader, val_loader) or (train_loader, val_loader, n_data) if is_instance."""
    folder = _imagenet_folder(dataset, data_root)
    dataset_class = ImageFolderInstance if is_instance else datasets.ImageFolder
    train_set = dataset_class(os.path.join(folder, 'train'), transform=train_transform())
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                              pin_memory=_PIN)
    val_loader = _val_loader(folder, batch_size, num_workers // 2)
    if is_instance:
        return train_loader, val_loader, len(train_set)
    return train_loader, val_loader


def get_dataloader_sample(dataset='imagenet', batch_size=128, num_workers=8, is_sample=False, k=4096,
                          data_root='./data'):
    """RepDistiller's CRD loaders -> (train_loader, val_loader, n_data, num_classes); contrast indices
    are drawn per batch in the workers."""
    folder = _imagenet_folder(dataset, data_root)
    train_set = ImageFolderSample(os.path.join(folder, 'train'), transform=train_transform(), k=k)
    collate = ContrastCollate(ContrastSampler(train_set.targets, k)) if is_sample else None
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                              pin_memory=_PIN, collate_fn=collate)
    val_loader = _val_loader(folder, batch_size, num_workers)
    return train_loader, val_loader, len(train_set), len(train_set.classes)


def get_test_loader(dataset='imagenet', batch_size=128, num_workers=8, data_root='./data'):
    return _val_loader(_imagenet_folder(dataset, data_root), batch_size, num_workers)


def _imagenet_folder(dataset, data_root):
    if dataset != 'imagenet':
        raise UserError(f"dataset '{dataset}' is not supported here; use --dataset imagenet")
    return find_imagenet(data_root)


def _val_loader(folder, batch_size, num_workers):
    val_set = datasets.ImageFolder(os.path.join(folder, 'val'), transform=test_transform())
    return DataLoader(val_set, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=_PIN)
