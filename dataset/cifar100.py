"""CIFAR-100 read from torchvision's on-disk layout, with RepDistiller's dataset classes and loaders.

Folder: `<data_root>/cifar-100-python/{train,test,meta}` (the pickles are read here directly, so
torchvision's CIFAR100 attribute renames do not matter). Missing -> downloaded with md5 check.
The pickles are loaded by an unpickler that builds only plain data and numpy arrays, then checked.
"""
import os
import pickle

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.datasets.utils import download_and_extract_archive

from dataset.contrast import ContrastCollate, ContrastSampler
from helper.errors import UserError

try:  # numpy >= 2 keeps it in numpy._core, numpy 1 in numpy.core
    from numpy._core.multiarray import _reconstruct
except ImportError:
    from numpy.core.multiarray import _reconstruct

CIFAR100_URL = 'https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz'
CIFAR100_MD5 = 'eb9058c3a382ffc7106e4002c42a8d85'
CIFAR100_FOLDER = 'cifar-100-python'
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
NUM_CLASSES = 100
CROP_PADDING = 4


def train_transform(mean=CIFAR100_MEAN, std=CIFAR100_STD):
    """RepDistiller's CIFAR train augmentation: zero-padded RandomCrop(32, 4), flip, normalise."""
    return transforms.Compose([
        transforms.RandomCrop(32, padding=CROP_PADDING),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def test_transform(mean=CIFAR100_MEAN, std=CIFAR100_STD):
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])


def ensure_cifar100(data_root, download=True):
    """Returns `<data_root>/cifar-100-python`, downloading it when missing; UserError when impossible."""
    folder = os.path.join(data_root, CIFAR100_FOLDER)
    if _is_complete(folder):
        return folder
    if not download:
        raise UserError(f'CIFAR-100 not found in {folder}; download {CIFAR100_URL} into {data_root} '
                        'or pass --data_root')
    made = not os.path.exists(data_root)
    try:
        download_and_extract_archive(CIFAR100_URL, download_root=data_root, md5=CIFAR100_MD5)
    except (OSError, RuntimeError) as error:
        if made and os.path.isdir(data_root) and not os.listdir(data_root):
            os.rmdir(data_root)  # a failed download leaves no empty folder behind
        reason = ' '.join(str(error).split()) or type(error).__name__
        raise UserError(f'CIFAR-100 not found in {folder} and download from {CIFAR100_URL} failed '
                        f'({reason}); download it by hand or pass --data_root') from error
    if not _is_complete(folder):
        raise UserError(f'CIFAR-100 archive from {CIFAR100_URL} did not produce {folder}/{{train,test,meta}}; '
                        'delete it and retry or pass --data_root')
    return folder


def _is_complete(folder):
    return all(os.path.isfile(os.path.join(folder, name)) for name in ('train', 'test', 'meta'))


def load_cifar100(data_root, train, download=True):
    """-> images uint8 [N, 32, 32, 3] (HWC), fine labels int64 [N]; N = 50000 train / 10000 test."""
    folder = ensure_cifar100(data_root, download)
    path = os.path.join(folder, 'train' if train else 'test')
    images, labels = _checked_split(path, _unpickle(path))
    images = images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images, dtype=np.uint8), labels


def _unpickle(path):
    """CIFAR's pickle at path -> its dict, built by an unpickler that can create nothing but plain data."""
    try:
        with open(path, 'rb') as f:
            return _CifarUnpickler(f, encoding='bytes').load()
    except _RefusedGlobal as error:
        raise _not_cifar(path, str(error)) from None
    except Exception as error:  # garbage bytes raise any of a dozen types; each means "not a CIFAR pickle"
        reason = ' '.join(str(error).split()) or type(error).__name__
        raise _not_cifar(path, f'unreadable pickle: {reason}') from error


class _RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a callable or class outside CIFAR's few; it is refused before anything runs."""


class _CifarUnpickler(pickle.Unpickler):
    """Resolves only the globals CIFAR's pickles name; any other (os.system, eval, ...) is refused unloaded."""

    def find_class(self, module, name):
        try:
            return _CIFAR_GLOBALS[module, name]
        except KeyError:
            raise _RefusedGlobal(f'it refers to {module}.{name}, which no CIFAR-100 file does; refused, '
                                 'nothing in it was run') from None


def _latin1_bytes(text, encoding):
    """Python 3 writes bytes into protocol-2 pickles as `_codecs.encode(text, 'latin1')`; allow only that."""
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
        raise pickle.UnpicklingError(f'_codecs.encode called with {type(text).__name__}, {encoding!r}')
    return text.encode('latin1')


# The real files (Python 2 cPickle, protocol 2) hold dicts, lists, str, ints and numpy arrays; an array
# is rebuilt by _reconstruct(ndarray, ...) plus dtype(...). Either numpy spelling is accepted.
_CIFAR_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): _reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _reconstruct,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('_codecs', 'encode'): _latin1_bytes,
}


def _checked_split(path, batch):
    """CIFAR split dict -> (data uint8 [N, 3072], fine labels int64 [N]); UserError saying what is wrong."""
    if not isinstance(batch, dict):
        raise _not_cifar(path, f'its top level is {type(batch).__name__}, not a dict')
    missing = [key for key in (b'data', b'fine_labels') if key not in batch]
    if missing:
        raise _not_cifar(path, f"no {' or '.join(map(repr, missing))} entry")
    data = _checked_data(path, batch[b'data'])
    return data, _checked_labels(path, batch[b'fine_labels'], len(data))


def _checked_data(path, data):
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        described = f'{data.dtype} {list(data.shape)}' if isinstance(data, np.ndarray) else type(data).__name__
        raise _not_cifar(path, f"b'data' is {described}, not a uint8 array [N, 3072]")
    if len(data) == 0:
        raise _not_cifar(path, "b'data' holds no images")
    return data


def _checked_labels(path, labels, n_images):
    if isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in 'iu':
        labels = labels.tolist()
    if not isinstance(labels, list) or not all(type(label) is int for label in labels):
        raise _not_cifar(path, "b'fine_labels' is not a list of integers")
    if len(labels) != n_images:
        raise _not_cifar(path, f"b'fine_labels' has {len(labels)} labels for {n_images} images")
    outside = [label for label in labels if not 0 <= label < NUM_CLASSES]
    if outside:
        raise _not_cifar(path, f"b'fine_labels' holds {outside[0]}, outside [0, {NUM_CLASSES})")
    return np.asarray(labels, dtype=np.int64)


def _not_cifar(path, what):
    return UserError(f'{path} is not a CIFAR-100 file ({what}); delete {os.path.dirname(path)} and rerun to '
                     'download it again, or pass --data_root')


class ImageArrayDataset(Dataset):
    """uint8 HWC image array + labels -> (transform(PIL image), target) or (..., index) with_index."""

    def __init__(self, images, labels, transform=None, target_transform=None, with_index=False):
        self.data = images  # [N, H, W, 3] uint8
        self.targets = labels  # [N] int64
        self.transform = transform
        self.target_transform = target_transform
        self.with_index = with_index

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        img = Image.fromarray(self.data[index])
        target = int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return (img, target, index) if self.with_index else (img, target)


class CIFAR100Instance(ImageArrayDataset):
    """CIFAR-100 returning (img, target, index)."""

    def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
        images, labels = load_cifar100(root, train, download)
        super().__init__(images, labels, transform, target_transform, with_index=True)
        self.train = train


class CIFAR100InstanceSample(CIFAR100Instance):
    """CIFAR-100 returning (img, target, index, sample_idx [k+1]) for CRD; (img, target, index) if not is_sample.

    sample_idx[0] is the positive (exact: index itself; relax: a random same-class sample), then k
    negatives from other classes drawn without replacement (see dataset.contrast.ContrastSampler)."""

    def __init__(self, root, train=True, transform=None, target_transform=None, download=False,
                 k=4096, mode='exact', is_sample=True, percent=1.0):
        super().__init__(root, train, transform, target_transform, download)
        self.k = k
        self.mode = mode
        self.is_sample = is_sample
        self.contrast = ContrastSampler(self.targets, k, mode, percent)

    def __getitem__(self, index):
        img, target, index = super().__getitem__(index)
        if not self.is_sample:
            return img, target, index
        sample_idx = self.contrast.sample([int(self.targets[index])], [index])[0].numpy()
        return img, target, index, sample_idx


def get_cifar100_dataloaders(batch_size=128, num_workers=8, is_instance=False, data_root='./data'):
    """RepDistiller's loaders -> (train_loader, val_loader) or (train_loader, val_loader, n_data) if is_instance."""
    train_set = CIFAR100Instance(data_root, True, train_transform(), download=True)
    train_set.with_index = is_instance
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=num_workers)
    val_loader = _val_loader(data_root, batch_size, num_workers)
    if is_instance:
        return train_loader, val_loader, len(train_set)
    return train_loader, val_loader


def get_cifar100_dataloaders_sample(batch_size=128, num_workers=8, k=4096, mode='exact', is_sample=True,
                                    percent=1.0, data_root='./data'):
    """RepDistiller's CRD loaders -> (train_loader, val_loader, n_data); train batches
    (img, target, index, sample_idx [B, k+1]), sampled per batch in the workers."""
    train_set = CIFAR100InstanceSample(data_root, True, train_transform(), download=True, k=k, mode=mode,
                                       is_sample=False, percent=percent)
    collate = ContrastCollate(train_set.contrast) if is_sample else None
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                              collate_fn=collate)
    return train_loader, _val_loader(data_root, batch_size, num_workers), len(train_set)


def _val_loader(data_root, batch_size, num_workers):
    """RepDistiller's test loader: half the batch size and half the workers."""
    images, labels = load_cifar100(data_root, train=False)
    val_set = ImageArrayDataset(images, labels, test_transform())
    return DataLoader(val_set, batch_size=int(batch_size / 2), shuffle=False, num_workers=int(num_workers / 2))
