"""Broken or hostile data files stop with one `error:` line naming the file, never a traceback or code execution."""
import gzip
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

import dataset.cifar100 as cifar100
from dataset.fashion_mnist import load_fashion_mnist
from helper.errors import UserError
from tests.cifar_fixture import make_fake_cifar100

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION_NAMES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
                 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')


def cifar_folder(root):
    return os.path.join(str(root), 'cifar-100-python')


def write_cifar_split(root, content, split='train', raw=None):
    """Fake CIFAR-100 folder whose `split` file holds pickle.dumps(content, protocol=2), or the bytes `raw`."""
    make_fake_cifar100(root, 1, 1)
    with open(os.path.join(cifar_folder(root), split), 'wb') as f:
        f.write(raw if raw is not None else pickle.dumps(content, protocol=2))
    return os.path.join(cifar_folder(root), split)


def cifar_split(entries=None, n=4):
    """A CIFAR-100 split dict of n blank images, with `entries` replacing or adding items."""
    split = {b'data': np.zeros((n, 3072), dtype=np.uint8), b'fine_labels': list(range(n)),
             b'coarse_labels': [0] * n, b'filenames': [b'x.png'] * n, b'batch_label': b'training batch 1 of 1'}
    split.update(entries or {})
    return split


def assert_one_line_error_naming(caught, path):
    message = str(caught.value)
    assert '\n' not in message and path in message


# ---------------------------------------------------------------- CIFAR-100: hostile pickles


class CreatesFileWhenUnpickled:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, 'w')


def test_cifar_pickle_that_would_run_code_is_refused_and_creates_no_file(tmp_path):
    marker = tmp_path / 'created_by_pickle'
    path = write_cifar_split(tmp_path / 'data', cifar_split({b'data': CreatesFileWhenUnpickled(str(marker))}))
    with pytest.raises(UserError) as caught:
        cifar100.load_cifar100(str(tmp_path / 'data'), train=True, download=False)
    assert not marker.exists()
    assert_one_line_error_naming(caught, path)
    assert 'io.open' in str(caught.value)
    with open(path, 'rb') as f:  # control: plain pickle.load of the same bytes does create the file
        pickle.load(f, encoding='bytes')[b'data'].close()
    assert marker.exists()


def test_cifar_pickle_calling_os_system_is_refused(tmp_path):
    marker = tmp_path / 'created_by_system'

    class RunsShell:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    path = write_cifar_split(tmp_path / 'data', RunsShell(), split='test')
    with pytest.raises(UserError) as caught:
        cifar100.load_cifar100(str(tmp_path / 'data'), train=False, download=False)
    assert not marker.exists()
    assert_one_line_error_naming(caught, path)


# ---------------------------------------------------------------- CIFAR-100: the real format keeps loading


def python2_pickle(obj):
    """Protocol-2 bytes as Python 2's cPickle wrote the real CIFAR files: str as BINSTRING, numpy.core names."""
    out = bytearray(b'\x80\x02')
    _emit(obj, out)
    return bytes(out + b'.')


def _emit(obj, out):
    if isinstance(obj, dict):
        out += b'}('
        for key, value in obj.items():
            _emit(key, out)
            _emit(value, out)
        out += b'u'
    elif isinstance(obj, (list, tuple)):
        out += b'('
        for item in obj:
            _emit(item, out)
        out += b'l' if isinstance(obj, list) else b't'
    elif isinstance(obj, bool) or obj is None:
        out += {True: b'\x88', False: b'\x89', None: b'N'}[obj]
    elif isinstance(obj, int):
        out += b'J' + struct.pack('<i', obj)
    elif isinstance(obj, bytes):
        out += (b'U' + bytes([len(obj)]) if len(obj) < 256 else b'T' + struct.pack('<i', len(obj))) + obj
    elif isinstance(obj, np.dtype):
        out += b'cnumpy\ndtype\n'
        _emit((obj.str[1:].encode(), 0, 1), out)
        out += b'R'
        _emit((3, obj.str[:1].encode(), None, None, None, -1, -1, 0), out)
        out += b'b'
    elif isinstance(obj, np.ndarray):
        out += b'cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n'
        _emit((0,), out)
        out += b'U\x01b\x87R'
        _emit((1, obj.shape, obj.dtype, False, obj.tobytes()), out)
        out += b'b'
    else:
        raise TypeError(type(obj))


def test_cifar_pickle_written_like_the_real_python2_files_loads(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (6, 3072), dtype=np.uint8)
    split = cifar_split({b'data': data, b'fine_labels': [99, 0, 5, 5, 42, 7]}, n=6)
    write_cifar_split(tmp_path, None, raw=python2_pickle(split))
    images, labels = cifar100.load_cifar100(str(tmp_path), train=True, download=False)
    assert labels.tolist() == [99, 0, 5, 5, 42, 7] and labels.dtype == np.int64
    assert np.array_equal(images, data.reshape(6, 3, 32, 32).transpose(0, 2, 3, 1))


def test_cifar_fixture_written_by_python3_pickle_loads(tmp_path):
    make_fake_cifar100(tmp_path, 2, 1, seed=1)
    images, labels = cifar100.load_cifar100(str(tmp_path), train=False, download=False)
    assert images.shape == (100, 32, 32, 3) and sorted(labels.tolist()) == list(range(100))


# ---------------------------------------------------------------- CIFAR-100: garbage and wrong contents


@pytest.mark.parametrize('raw', [b'', b'this is not a pickle at all', bytes(range(256)) * 4,
                                 pickle.dumps(cifar_split(), protocol=2)[:200]],
                         ids=['empty', 'text', 'random-bytes', 'truncated'])
def test_garbage_or_truncated_cifar_pickle_is_one_line_error(tmp_path, raw):
    path = write_cifar_split(tmp_path, None, raw=raw)
    with pytest.raises(UserError) as caught:
        cifar100.load_cifar100(str(tmp_path), train=True, download=False)
    assert_one_line_error_naming(caught, path)


@pytest.mark.parametrize('content, expected', [
    (12, 'dict'),
    ({b'fine_labels': [1]}, "b'data'"),
    (cifar_split({b'data': 7}), 'uint8'),
    (cifar_split({b'data': np.zeros((4, 3072), dtype=np.float32)}), 'uint8'),
    (cifar_split({b'data': np.zeros((4, 1000), dtype=np.uint8)}), '3072'),
    (cifar_split({b'fine_labels': [0, 1, 2]}), '3 labels for 4 images'),
    (cifar_split({b'fine_labels': [0, 1, 2, 100]}), '[0, 100)'),
    (cifar_split({b'fine_labels': [0, 1, 2, -1]}), '[0, 100)'),
    (cifar_split({b'fine_labels': [b'a', b'b', b'c', b'd']}), 'integers'),
    (cifar_split({b'fine_labels': 3}), 'integers'),
], ids=['not-a-dict', 'no-data', 'data-int', 'data-float', 'data-shape', 'label-count', 'label-100', 'label-negative',
        'label-bytes', 'labels-int'])
def test_cifar_pickle_with_wrong_contents_says_what_is_wrong_in_one_line(tmp_path, content, expected):
    path = write_cifar_split(tmp_path, content)
    with pytest.raises(UserError) as caught:
        cifar100.load_cifar100(str(tmp_path), train=True, download=False)
    assert_one_line_error_naming(caught, path)
    assert expected in str(caught.value)


# ---------------------------------------------------------------- Fashion-MNIST IDX files


def idx_bytes(array):
    header = b'\x00\x00\x08' + bytes([array.ndim]) + b''.join(struct.pack('>I', n) for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion_folder(root, n=6, gz=True):
    """`<root>/fashion-mnist/` with the four IDX files (n images per split); returns the folder."""
    folder = os.path.join(str(root), 'fashion-mnist')
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in FASHION_NAMES:
        shape = (n, 28, 28) if 'images' in name else (n,)
        content = idx_bytes(rng.integers(0, 10 if 'labels' in name else 256, shape))
        with (gzip.open if gz else open)(os.path.join(folder, name + ('.gz' if gz else '')), 'wb') as f:
            f.write(content)
    return folder


def replace_file(path, raw):
    with open(path, 'wb') as f:
        f.write(raw)


@pytest.mark.parametrize('gz', [True, False], ids=['gz', 'raw'])
def test_small_fashion_folder_in_the_real_format_loads(tmp_path, gz):
    write_fashion_folder(tmp_path, n=6, gz=gz)
    images, labels = load_fashion_mnist(str(tmp_path), train=True)
    assert images.shape == (6, 32, 32, 3) and labels.shape == (6,) and labels.max() < 10


def gz_of(raw):
    return gzip.compress(raw)


GOOD_IMAGES = idx_bytes(np.random.default_rng(1).integers(0, 256, (6, 28, 28)))


@pytest.mark.parametrize('raw, expected', [
    (b'PK\x03\x04 not gzip at all', 'gzip'),
    (gz_of(GOOD_IMAGES)[:-30], 'gzip'),
    (gz_of(GOOD_IMAGES)[:20] + b'\xff' * 40 + gz_of(GOOD_IMAGES)[60:], 'gzip'),
    (gz_of(GOOD_IMAGES[:-100]), 'truncated'),
    (gz_of(GOOD_IMAGES[:9]), 'truncated'),
    (gz_of(b'\x00\x00'), 'not a uint8 IDX'),
    (gz_of(idx_bytes(np.zeros((6, 28)))), '[N, 28, 28]'),
], ids=['not-gzip', 'truncated-gz', 'corrupt-gz', 'short-payload', 'short-header', 'tiny', 'wrong-shape'])
def test_broken_fashion_images_file_is_one_line_error_naming_it(tmp_path, raw, expected):
    folder = write_fashion_folder(tmp_path)
    path = os.path.join(folder, 'train-images-idx3-ubyte.gz')
    replace_file(path, raw)
    with pytest.raises(UserError) as caught:
        load_fashion_mnist(str(tmp_path), train=True)
    assert_one_line_error_naming(caught, path)
    assert expected in str(caught.value)


def test_fashion_labels_file_shorter_than_its_header_says_is_one_line_error(tmp_path):
    folder = write_fashion_folder(tmp_path, gz=False)
    path = os.path.join(folder, 't10k-labels-idx1-ubyte')
    replace_file(path, idx_bytes(np.zeros(6))[:-2])
    with pytest.raises(UserError) as caught:
        load_fashion_mnist(str(tmp_path), train=False)
    assert_one_line_error_naming(caught, path)
    assert '6 bytes' in str(caught.value) and '4' in str(caught.value)


def test_fashion_labels_that_do_not_match_the_images_are_one_line_error(tmp_path):
    folder = write_fashion_folder(tmp_path)
    path = os.path.join(folder, 'train-labels-idx1-ubyte.gz')
    replace_file(path, gz_of(idx_bytes(np.full(6, 10))))
    with pytest.raises(UserError, match=r'\[0, 10\)') as caught:
        load_fashion_mnist(str(tmp_path), train=True)
    assert_one_line_error_naming(caught, path)
    replace_file(path, gz_of(idx_bytes(np.zeros(5))))
    with pytest.raises(UserError, match='5 labels for 6 images') as caught:
        load_fashion_mnist(str(tmp_path), train=True)
    assert_one_line_error_naming(caught, path)


# ---------------------------------------------------------------- the public entry point


def run_train_teacher(cwd, *flags):
    command = [sys.executable, os.path.join(ROOT, 'train_teacher.py'), '--model', 'resnet8', '--epochs', '1',
               '--device', 'cpu', '--num_workers', '0', *flags]
    return subprocess.run(command, cwd=str(cwd), capture_output=True, text=True, timeout=300)


def assert_exit_2_with_one_error_line(result, path):
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith('error:') and path in lines[0], result.stderr
    assert 'Traceback' not in result.stderr + result.stdout


def test_train_teacher_on_hostile_cifar_pickle_exits_2_with_one_line(tmp_path):
    marker = tmp_path / 'created_by_pickle'
    path = write_cifar_split(tmp_path / 'data', cifar_split({b'data': CreatesFileWhenUnpickled(str(marker))}))
    result = run_train_teacher(tmp_path, '--dataset', 'cifar100', '--data_root', str(tmp_path / 'data'))
    assert_exit_2_with_one_error_line(result, path)
    assert not marker.exists()


def test_train_teacher_on_cifar_pickle_with_wrong_contents_exits_2_with_one_line(tmp_path):
    path = write_cifar_split(tmp_path / 'data', cifar_split({b'data': 7}))
    result = run_train_teacher(tmp_path, '--dataset', 'cifar100', '--data_root', str(tmp_path / 'data'))
    assert_exit_2_with_one_error_line(result, path)


def test_train_teacher_on_broken_fashion_folder_exits_2_with_one_line(tmp_path):
    folder = write_fashion_folder(tmp_path / 'data')
    path = os.path.join(folder, 'train-images-idx3-ubyte.gz')
    replace_file(path, gz_of(GOOD_IMAGES)[:-30])
    result = run_train_teacher(tmp_path, '--dataset', 'fashion_mnist', '--data_root', str(tmp_path / 'data'))
    assert_exit_2_with_one_error_line(result, path)
