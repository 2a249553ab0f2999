"""Fashion-MNIST as 32x32x3 uint8 images, so every CIFAR model runs on it unchanged (10 classes).

Looked up, in order: `<data_root>/fashion-mnist/`, `<data_root>/` itself, the Debian package's
/usr/share/datasets/fashion-mnist (`apt-get install dataset-fashion-mnist`); else the four IDX
files are downloaded into `<data_root>/fashion-mnist/` from torchvision's mirror. A folder holding
some of the four files but not all is refused (never skipped for the next); the log names the folder read.
"""
import gzip
import logging
import math
import os
import zlib

import numpy as np
from torchvision.datasets.utils import download_url

from helper.errors import UserError

log = logging.getLogger("kd")
FASHION_MNIST_URL = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'
DEBIAN_FOLDER = '/usr/share/datasets/fashion-mnist'
FILES = {  # name -> md5 of the .gz on the mirror
    'train-images-idx3-ubyte': '8d4fb7e6c68d591d4c3dfef9ec88bf0d',
    'train-labels-idx1-ubyte': '25c81989df183df01b3e8a0aad5dffbe',
    't10k-images-idx3-ubyte': 'bef4ecab320f06d8554ea6380940ec79',
    't10k-labels-idx1-ubyte': 'bb300cfdad3c16e7a12a480ee83cd310',
}
# Mean and std of all pixels of the 60000 zero-padded 32x32 training images, scaled to [0, 1]
# (np.pad(x, 2) / 255 then .mean() / .std(); 0.21900, 0.33181); equal for the 3 replicated channels.
FASHION_MNIST_MEAN = (0.2190, 0.2190, 0.2190)
FASHION_MNIST_STD = (0.3318, 0.3318, 0.3318)
NUM_CLASSES = 10
_PAD = 2  # 28 + 2 * 2 = 32


def load_fashion_mnist(data_root, train):
    """-> images uint8 [N, 32, 32, 3] (zero-padded, gray replicated), labels int64 [N]; N = 60000 / 10000."""
    folder = find_fashion_mnist(data_root)
    split = 'train' if train else 't10k'
    images_path = _file_in(folder, f'{split}-images-idx3-ubyte')
    labels_path = _file_in(folder, f'{split}-labels-idx1-ubyte')
    gray = read_idx(images_path)  # [N, 28, 28]
    labels = read_idx(labels_path).astype(np.int64)
    _check_split(images_path, gray, labels_path, labels)
    if not train:  # the test split is read last: one line per run, once both splits are read
        log.info('Fashion-MNIST read from %s', folder)
    padded = np.pad(gray, ((0, 0), (_PAD, _PAD), (_PAD, _PAD)))
    return np.ascontiguousarray(np.repeat(padded[..., None], 3, axis=3)), labels


def _check_split(images_path, gray, labels_path, labels):
    if gray.ndim != 3 or gray.shape[1:] != (28, 28):
        raise _broken(images_path, f'holds an array of shape {list(gray.shape)}, not images [N, 28, 28]')
    if labels.ndim != 1:
        raise _broken(labels_path, f'holds an array of shape {list(labels.shape)}, not labels [N]')
    if len(gray) == 0:
        raise _broken(images_path, 'holds no images')
    if len(labels) != len(gray):
        raise _broken(labels_path, f'holds {len(labels)} labels for {len(gray)} images')
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise _broken(labels_path, f'holds label {labels.max()}, outside [0, {NUM_CLASSES})')


def find_fashion_mnist(data_root):
    """First folder holding the four IDX files (.gz or raw); downloads when none does. A folder holding some of
    them but not all is a UserError naming the missing ones."""
    candidates = [os.path.join(data_root, 'fashion-mnist'), data_root, DEBIAN_FOLDER]
    for folder in candidates:
        missing = [name for name in FILES if not _file_in(folder, name)]
        if not missing:
            return folder
        if len(missing) < len(FILES):
            raise UserError(f"Fashion-MNIST folder {folder} is incomplete: {', '.join(missing)} (.gz or raw) "
                            'missing; copy them there, or move the folder away to read or download a complete copy')
    target = candidates[0]
    try:
        for name, md5 in FILES.items():
            download_url(f'{FASHION_MNIST_URL}{name}.gz', target, md5=md5)
    except (OSError, RuntimeError) as error:
        reason = ' '.join(str(error).split()) or type(error).__name__
        raise UserError(f"Fashion-MNIST IDX files not found in {', '.join(candidates)} and download from "
                        f'{FASHION_MNIST_URL} failed ({reason}); run `apt-get install dataset-fashion-mnist` '
                        'or pass --data_root') from error
    return target


def _file_in(folder, name):
    """Path of `name` or `name.gz` in folder, or None."""
    for path in (os.path.join(folder, name), os.path.join(folder, name + '.gz')):
        if os.path.isfile(path):
            return path
    return None


def read_idx(path):
    """IDX file (uint8 payload, optionally gzipped) -> numpy array of the header's shape."""
    raw = _read_bytes(path)
    if raw[:3] != b'\x00\x00\x08' or len(raw) < 4:
        raise _broken(path, 'is not a uint8 IDX file')
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise _broken(path, f'is truncated: {len(raw)} bytes, shorter than its {header_size}-byte header')
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim))
    expected, found = math.prod(shape), len(raw) - header_size
    if found != expected:
        state = 'truncated' if found < expected else 'longer than its header says'
        raise _broken(path, f'is {state}: its header says {list(shape)} = {expected} bytes of pixels or labels, '
                            f'it holds {found}')
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def _read_bytes(path):
    """Whole file, gunzipped when it ends in .gz; a bad or truncated gzip stream is a UserError."""
    try:
        if path.endswith('.gz'):
            with gzip.open(path, 'rb') as f:
                return f.read()
        with open(path, 'rb') as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        reason = ' '.join(str(error).split()) or type(error).__name__
        raise _broken(path, f'cannot be read as {"gzip" if path.endswith(".gz") else "a file"} ({reason})') from error


def _broken(path, what):
    return UserError(f'{path} {what}; replace it with an intact copy, or delete it and rerun to download it again')
