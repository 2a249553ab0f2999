"""STL-10's labelled splits read from the official binary files, as uint8 HWC arrays like the other readers.

Folder: `<data_root>/stl10_binary/` holding `train_X.bin`, `train_y.bin` (5000 images) and `test_X.bin`, `test_y.bin`
(8000 images), as http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz unpacks. `*_X.bin` is raw uint8: per image
3 planes (R, G, B) of 96x96, each plane stored column by column (column-major, the MATLAB order the files were made
in); `*_y.bin` is one uint8 label per image, 1..10. torchvision.datasets.STL10 reads them the same way (reshape to
[N, 3, 96, 96], swap the last two axes; labels - 1). Missing -> downloaded with its MD5 checked when online; offline,
or when the files are malformed (a byte count that is not whole images, labels outside 1..10 or not one per image),
a one-line error names the file and what was expected.
"""
import os

import numpy as np
from torchvision.datasets.utils import download_and_extract_archive

from helper.errors import UserError

STL10_URL = 'http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz'
STL10_MD5 = '91f7769df0f17e558f3565bffb0c7dfb'
STL10_FOLDER = 'stl10_binary'
NUM_CLASSES = 10
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE  # 27648
FILES = ('train_X.bin', 'train_y.bin', 'test_X.bin', 'test_y.bin')


def split_files(folder, train):
    """(images file, labels file) of a split in `folder`."""
    split = 'train' if train else 'test'
    return os.path.join(folder, f'{split}_X.bin'), os.path.join(folder, f'{split}_y.bin')


def ensure_stl10(data_root, download=True):
    """Returns `<data_root>/stl10_binary`, downloading it when its four files are missing; UserError when impossible."""
    folder = os.path.join(data_root, STL10_FOLDER)
    if _is_complete(folder):
        return folder
    expected = f"{folder}/{{{','.join(FILES)}}}"
    if not download:
        raise UserError(f'STL-10 not found: expected {expected}; download {STL10_URL} and unpack it into {data_root}, '
                        'or pass --data_root')
    try:
        download_stl10(data_root)
    except (OSError, RuntimeError) as error:
        reason = ' '.join(str(error).split()) or type(error).__name__
        raise UserError(f'STL-10 not found: expected {expected}, and download from {STL10_URL} failed ({reason}); '
                        f'download and unpack it into {data_root} by hand, or pass --data_root') from error
    if not _is_complete(folder):
        raise UserError(f'the STL-10 archive from {STL10_URL} did not produce {expected}; delete it and retry, or '
                        'pass --data_root')
    return folder


def download_stl10(data_root):
    """Fetch and unpack the official archive (2.6 GB) into data_root, MD5 checked (torchvision's downloader)."""
    download_and_extract_archive(STL10_URL, download_root=data_root, md5=STL10_MD5)


def _is_complete(folder):
    return all(os.path.isfile(os.path.join(folder, name)) for name in FILES)


def load_stl10(data_root, train, download=True):
    """-> images uint8 [N, 96, 96, 3] (HWC), labels int64 [N] in 0..9; N = 5000 train / 8000 test."""
    images_path, labels_path = split_files(ensure_stl10(data_root, download), train)
    images = read_images(images_path)
    labels = read_labels(labels_path)
    if len(labels) != len(images):
        raise _broken(labels_path, f'holds {len(labels)} labels for the {len(images)} images of '
                                   f'{os.path.basename(images_path)}; expected one uint8 label per image')
    return images, labels


def read_images(path):
    """`*_X.bin` -> uint8 [N, 96, 96, 3]: stored as planes [N, 3, 96 (columns), 96 (rows)], turned to rows x cols."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % IMAGE_BYTES:
        raise _broken(path, f'holds {raw.size} bytes, not a whole number of images of 3x{SIDE}x{SIDE} = {IMAGE_BYTES} '
                            'bytes')
    planes = raw.reshape(-1, 3, SIDE, SIDE)  # [N, C, column, row]
    return np.ascontiguousarray(planes.transpose(0, 3, 2, 1))  # [N, row, column, C]


def read_labels(path):
    """`*_y.bin` (uint8 labels 1..10) -> int64 [N] in 0..9."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0:
        raise _broken(path, 'holds no labels')
    outside = raw[(raw < 1) | (raw > NUM_CLASSES)]
    if outside.size:
        raise _broken(path, f'holds label {int(outside[0])}, outside 1..{NUM_CLASSES} (one uint8 per image)')
    return raw.astype(np.int64) - 1


def _broken(path, what):
    return UserError(f'{path} {what}; replace it with the file from {STL10_URL}, or pass --data_root')
