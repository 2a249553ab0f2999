"""Tiny-ImageNet (200 classes, 64x64 RGB) read from the folder as distributed, as uint8 HWC arrays like the other
readers.

Folder: `<data_root>/tiny-imagenet-200/` as http://cs231n.stanford.edu/tiny-imagenet-200.zip unpacks:
`wnids.txt` (one WordNet id a line: the classes, in the order that numbers them), `train/<wnid>/images/*.JPEG`
(500 a class) and `val/images/*.JPEG` (10000) labelled by `val/val_annotations.txt` (tab-separated: file, wnid, box
x, y, w, h). The val images are not in class folders: an ImageFolder on `val/` sees one class, `images` (the commonest
Tiny-ImageNet bug); here the labels come from val_annotations.txt. `test/` has no labels and is not read. Nothing is
downloaded (torchvision has no Tiny-ImageNet); a missing folder, a wnid that wnids.txt does not list, an image the
annotations do not label (or label twice) or a file that is not a 64x64 image is a one-line error naming the file.
Grayscale JPEGs (a few hundred in the train split) are converted to RGB.
"""
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from helper.errors import UserError

TINY_IMAGENET_URL = 'http://cs231n.stanford.edu/tiny-imagenet-200.zip'
TINY_IMAGENET_FOLDER = 'tiny-imagenet-200'
SIDE = 64
IMAGE_SUFFIXES = ('.jpeg', '.jpg')
EXPECTED = ('wnids.txt', 'train/<wnid>/images/*.JPEG', 'val/images/*.JPEG', 'val/val_annotations.txt')


def find_tiny_imagenet(data_root):
    """-> `<data_root>/tiny-imagenet-200`; UserError naming the folder, what it must hold and where to get it."""
    folder = os.path.join(data_root, TINY_IMAGENET_FOLDER)
    wanted = {'wnids.txt': os.path.isfile, 'train': os.path.isdir, os.path.join('val', 'images'): os.path.isdir,
              os.path.join('val', 'val_annotations.txt'): os.path.isfile}
    missing = [name for name, exists in wanted.items() if not exists(os.path.join(folder, name))]
    if missing:
        state = 'not found' if not os.path.isdir(folder) else f"incomplete ({', '.join(missing)} missing)"
        raise UserError(f"Tiny-ImageNet {state}: expected {folder}/{{{','.join(EXPECTED)}}}; download "
                        f'{TINY_IMAGENET_URL} and unzip it into {data_root}, or pass --data_root')
    return folder


def read_wnids(folder):
    """The class ids of wnids.txt in its order (class k = line k)."""
    path = os.path.join(folder, 'wnids.txt')
    wnids = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    if not wnids:
        raise _broken(path, 'lists no class (expected one wnid a line)')
    odd = [w for w in wnids if len(w.split()) != 1]
    if odd:
        raise _broken(path, f'has the line {odd[0]!r}, not one wnid')
    repeated = sorted({w for w in wnids if wnids.count(w) > 1})
    if repeated:
        raise _broken(path, f'lists {repeated[0]} twice')
    return wnids


def split_samples(folder, train):
    """(image paths, labels int64 [N], wnids) of a split: train from the class folders, val from val_annotations.txt."""
    wnids = read_wnids(folder)
    samples = _train_samples(folder, wnids) if train else _val_samples(folder, wnids)
    paths = [path for path, _ in samples]
    return paths, np.asarray([label for _, label in samples], dtype=np.int64), wnids


def _train_samples(folder, wnids):
    train = os.path.join(folder, 'train')
    unlisted = sorted(set(os.listdir(train)) - set(wnids))
    if unlisted:
        raise _broken(os.path.join(train, unlisted[0]), f'is not a class of {os.path.join(folder, "wnids.txt")}')
    samples = []
    for label, wnid in enumerate(wnids):
        images = os.path.join(train, wnid, 'images')
        if not os.path.isdir(images):
            raise UserError(f'{images} is missing: wnids.txt lists {wnid}, so its training images are expected '
                            f'there (train/<wnid>/images/*.JPEG); download {TINY_IMAGENET_URL} again, or pass '
                            '--data_root')
        names = sorted(name for name in os.listdir(images) if name.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise _broken(images, 'holds no .JPEG image')
        samples += [(os.path.join(images, name), label) for name in names]
    return samples


def _val_samples(folder, wnids):
    """val/images/* labelled by val_annotations.txt: every image labelled exactly once, by a wnid of wnids.txt."""
    path = os.path.join(folder, 'val', 'val_annotations.txt')
    images = os.path.join(folder, 'val', 'images')
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    labels = {}
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split('\t')
        if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
            raise _broken(path, f'line {number} is {line!r}, not "<file>\\t<wnid>\\t<x>\\t<y>\\t<w>\\t<h>"')
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in label_of:
            raise _broken(path, f'line {number} labels {name} with {wnid}, which '
                                f'{os.path.join(folder, "wnids.txt")} does not list')
        if name in labels:
            raise _broken(path, f'line {number} labels {name} a second time')
        labels[name] = label_of[wnid]
    if not labels:
        raise _broken(path, 'labels no image')
    present = {name for name in os.listdir(images) if name.lower().endswith(IMAGE_SUFFIXES)}
    absent = sorted(set(labels) - present)
    if absent:
        raise UserError(f'{os.path.join(images, absent[0])} is missing: {path} labels it; download '
                        f'{TINY_IMAGENET_URL} again, or pass --data_root')
    unlabelled = sorted(present - set(labels))
    if unlabelled:
        more = f' (nor {len(unlabelled) - 1} more images there)' if len(unlabelled) > 1 else ''
        raise _broken(path, f'does not label {os.path.join(images, unlabelled[0])}{more}')
    return [(os.path.join(images, name), labels[name]) for name in sorted(labels)]


def load_tiny_imagenet(data_root, train):
    """-> images uint8 [N, 64, 64, 3] (HWC), labels int64 [N] (the line of wnids.txt); N = 100000 train / 10000 val."""
    paths, labels, _ = split_samples(find_tiny_imagenet(data_root), train)
    return read_images(paths), labels


def read_images(paths):
    """Decode 64x64 images (grayscale ones to RGB) -> uint8 [N, 64, 64, 3]."""
    images = np.empty((len(paths), SIDE, SIDE, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                if image.size != (SIDE, SIDE):
                    raise _broken(path, f'is {image.size[0]}x{image.size[1]} px, not {SIDE}x{SIDE}')
                images[i] = np.asarray(image.convert('RGB'))
        except (OSError, UnidentifiedImageError) as error:
            reason = ' '.join(str(error).split()) or type(error).__name__
            raise _broken(path, f'cannot be read as an image ({reason})') from None
    return images


def _read_text(path):
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = ' '.join(str(error).split()) or type(error).__name__
        raise _broken(path, f'cannot be read as text ({reason})') from None


def _broken(path, what):
    return UserError(f'{path} {what}; download {TINY_IMAGENET_URL} again, or pass --data_root')
