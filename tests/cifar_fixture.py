"""Writes a small fake CIFAR-100 in torchvision's on-disk pickle format, for tests."""
import os
import pickle

import numpy as np

NUM_CLASSES = 100


def make_fake_cifar100(root, n_train_per_class=5, n_test_per_class=2, seed=0):
    """Creates `<root>/cifar-100-python/{train,test,meta}` with random images; returns root (a data_root).

    Labels are shuffled (like the real files); data is uint8 [N, 3072] in CHW row-major order."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(str(root), 'cifar-100-python')
    os.makedirs(folder, exist_ok=True)
    for split, per_class in (('train', n_train_per_class), ('test', n_test_per_class)):
        _dump(os.path.join(folder, split), _split(rng, split, per_class))
    _dump(os.path.join(folder, 'meta'), {
        b'fine_label_names': [f'class_{c}'.encode() for c in range(NUM_CLASSES)],
        b'coarse_label_names': [f'superclass_{c}'.encode() for c in range(NUM_CLASSES // 5)],
    })
    return str(root)


def _split(rng, split, per_class):
    fine = rng.permutation(np.repeat(np.arange(NUM_CLASSES), per_class))
    return {
        b'data': rng.integers(0, 256, size=(len(fine), 3 * 32 * 32), dtype=np.uint8),
        b'fine_labels': fine.tolist(),
        b'coarse_labels': (fine // 5).tolist(),
        b'filenames': [f'fake_{split}_{i}.png'.encode() for i in range(len(fine))],
        b'batch_label': f'fake {split} batch'.encode(),
    }


def _dump(path, content):
    with open(path, 'wb') as f:
        pickle.dump(content, f, protocol=2)
