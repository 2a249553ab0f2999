"""python -m helper.probe (CRD's linear-probe transfer): the STL-10, Tiny-ImageNet and CIFAR-10 readers give back the
pixels and labels of files fabricated in the official layouts (a Tiny-ImageNet val/ that an ImageFolder misreads
included); probing leaves every weight and BatchNorm statistic of the network bit-identical; the probe's top-1 is
reproducible for a seed (Fashion-MNIST features); cached features are reused only under their own key; missing or
malformed data is one line naming what was expected where. CPU, tiny data, a resnet8 with random weights."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.datasets import ImageFolder

from dataset import stl10, tiny_imagenet
from helper.errors import UserError
from helper.runs.files import file_sha256
from helper.student.teacher import InputSpec
from helper.tools import probe
from models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = "/usr/share/datasets/fashion-mnist"
WNIDS = ["n02124075", "n01443537", "n09246464"]  # not sorted: wnids.txt, not the alphabet, numbers the classes
QUICK = ["--epochs", "3", "--batch_size", "4", "--device", "cpu"]


# ---- fabricated data in the official layouts ----------------------------------------------------------------------
def make_stl10(data_root, n_train=6, n_test=4, seed=0):
    """`<data_root>/stl10_binary/{train,test}_{X,y}.bin` as the official files store them -> {split: (images HWC,
    labels 1..10 as written)}. Each image is 3 planes (R, G, B), each plane written column by column."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(str(data_root), "stl10_binary")
    os.makedirs(folder, exist_ok=True)
    written = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 96, 96, 3), dtype=np.uint8)
        labels = (np.arange(n) % 10 + 1).astype(np.uint8)
        with open(os.path.join(folder, f"{split}_X.bin"), "wb") as f:
            for image in images:
                for channel in range(3):
                    f.write(image[:, :, channel].tobytes(order="F"))  # column-major plane
        labels.tofile(os.path.join(folder, f"{split}_y.bin"))
        written[split] = (images, labels)
    return written


def colour(label, i):
    return (40 + 60 * label, 60 + 40 * i, 220 - 70 * label)


def save_jpeg(path, rgb, side=64, mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.new("RGB", (side, side), rgb)
    (image.convert("L") if mode == "L" else image).save(path, "JPEG", quality=95)


def make_tiny_imagenet(data_root, per_class=2):
    """`<data_root>/tiny-imagenet-200/` as distributed (wnids.txt, words.txt, train/<wnid>/images + boxes, val/images +
    val_annotations.txt, test/images), 3 classes; each image one flat colour coding (class, index) -> the folder and
    {split: [(file name, label, colour)]}."""
    folder = os.path.join(str(data_root), "tiny-imagenet-200")
    os.makedirs(folder)
    with open(os.path.join(folder, "wnids.txt"), "w") as f:
        f.write("\n".join(WNIDS) + "\n")
    with open(os.path.join(folder, "words.txt"), "w") as f:
        f.write("".join(f"{w}\tclass {w}\n" for w in sorted(WNIDS)))
    expected = {"train": [], "val": []}
    for label, wnid in enumerate(WNIDS):
        boxes = []
        for i in range(per_class):
            name = f"{wnid}_{i}.JPEG"
            save_jpeg(os.path.join(folder, "train", wnid, "images", name), colour(label, i),
                      mode="L" if (label, i) == (0, 1) else "RGB")  # real train images include grayscale ones
            expected["train"].append((name, label, colour(label, i)))
            boxes.append(f"{name}\t0\t0\t63\t63\n")
        with open(os.path.join(folder, "train", wnid, f"{wnid}_boxes.txt"), "w") as f:
            f.write("".join(boxes))
    lines = []
    for n in range(per_class * len(WNIDS)):  # classes interleaved, as in the real file
        label, i = n % len(WNIDS), n // len(WNIDS)
        name = f"val_{n}.JPEG"
        save_jpeg(os.path.join(folder, "val", "images", name), colour(label, i))
        lines.append(f"{name}\t{WNIDS[label]}\t1\t2\t60\t61\n")
        expected["val"].append((name, label, colour(label, i)))
    with open(os.path.join(folder, "val", "val_annotations.txt"), "w") as f:
        f.write("".join(lines))
    save_jpeg(os.path.join(folder, "test", "images", "test_0.JPEG"), (0, 0, 0))
    return folder, expected


def make_cifar10(data_root, per_batch=4, seed=0):
    """`<data_root>/cifar-10-batches-py/` in torchvision's pickle layout -> {split: (images HWC, labels)}."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(str(data_root), "cifar-10-batches-py")
    os.makedirs(folder)
    written = {"train": ([], []), "test": ([], [])}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * per_batch}, f, protocol=2)
        split = written["test" if name == "test_batch" else "train"]
        split[0].append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        split[1].extend(labels)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=2)
    return {split: (np.concatenate(images), np.asarray(labels)) for split, (images, labels) in written.items()}


def save_checkpoint(folder, classes=100, dataset="cifar100", seed=0):
    """A resnet8 checkpoint as train_teacher.py records it, random weights and BatchNorm statistics far from (0, 1),
    so a pass in train mode would move them and give other features."""
    torch.manual_seed(seed)
    model = build_model("resnet8", classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(100)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(str(folder), "resnet8_best.pth")
    torch.save({"model": model.state_dict(), "arch": "resnet8", "num_classes": classes, "dataset": dataset}, path)
    return path


def run_probe(checkpoint, target, data_root, *flags):
    return probe.main([checkpoint, "--target", target, "--data_root", str(data_root), *QUICK, *map(str, flags)])


# ---- the readers --------------------------------------------------------------------------------------------------
def test_stl10_reader_turns_column_major_planes_into_the_images_written_and_labels_1_to_10_into_0_to_9(tmp_path):
    written = make_stl10(tmp_path)
    for split in ("train", "test"):
        images, labels = stl10.load_stl10(str(tmp_path), train=split == "train", download=False)
        assert images.dtype == np.uint8 and images.shape == written[split][0].shape
        assert np.array_equal(images, written[split][0])
        assert labels.dtype == np.int64 and np.array_equal(labels, written[split][1].astype(np.int64) - 1)


def test_tiny_imagenet_val_labels_come_from_val_annotations_where_an_image_folder_sees_one_class(tmp_path):
    folder, expected = make_tiny_imagenet(tmp_path)
    assert ImageFolder(os.path.join(folder, "val")).classes == ["images"]  # the bug this reader avoids
    for split in ("train", "val"):
        paths, labels, wnids = tiny_imagenet.split_samples(folder, train=split == "train")
        assert wnids == WNIDS
        read = {os.path.basename(p): int(label) for p, label in zip(paths, labels)}
        assert read == {name: label for name, label, _ in expected[split]}
        images, labels = tiny_imagenet.load_tiny_imagenet(str(tmp_path), train=split == "train")
        assert images.shape == (len(expected[split]), 64, 64, 3) and images.dtype == np.uint8
        by_name = {name: rgb for name, _, rgb in expected[split]}
        for path, image in zip(paths, images):
            rgb = by_name[os.path.basename(path)]
            if os.path.basename(path) == f"{WNIDS[0]}_1.JPEG":  # saved as grayscale: read back as R = G = B
                rgb = (np.asarray(Image.new("RGB", (1, 1), rgb).convert("L"))[0, 0],) * 3
            assert np.abs(image.reshape(-1, 3).astype(int) - np.asarray(rgb)).max() <= 3


def test_cifar10_batches_are_read_in_order_with_their_labels(tmp_path):
    written = make_cifar10(tmp_path)
    for split in ("train", "test"):
        images, labels = probe.load_cifar10(str(tmp_path), train=split == "train")
        assert np.array_equal(images, written[split][0]) and np.array_equal(labels, written[split][1])


# ---- the probe ----------------------------------------------------------------------------------------------------
def test_probe_writes_stl10_and_tiny_imagenet_into_one_probe_json_with_the_protocol(tmp_path):
    make_stl10(tmp_path / "data", n_train=10, n_test=6)
    make_tiny_imagenet(tmp_path / "data")
    checkpoint = save_checkpoint(tmp_path / "run")
    stl = run_probe(checkpoint, "stl10", tmp_path / "data")
    tiny = run_probe(checkpoint, "tiny_imagenet", tmp_path / "data", "--seed", "3")
    written = json.loads((tmp_path / "run" / "probe.json").read_text())
    assert written == {"stl10": stl, "tiny_imagenet": tiny}
    assert (stl["train_images"], stl["test_images"], tiny["train_images"], tiny["test_images"]) == (10, 6, 6, 6)
    for entry in (stl, tiny):
        assert 0 <= entry["top1"] <= 100 and entry["features"] == "pooled" and entry["feature_dim"] == 64
        assert (entry["input_size"], entry["normalisation"], entry["trained_on"]) == (32, "cifar100", "cifar100")
        assert (entry["lr"], entry["lr_schedule"], entry["epochs"], entry["batch_size"], entry["weight_decay"]) == \
            (0.1, "cosine", 3, 4, 0.0)
        assert entry["checkpoint_sha256"] == file_sha256(checkpoint) and entry["assumed"] == []
    assert tiny["seed"] == 3 and stl["seed"] == 0
    assert sorted(os.listdir(tmp_path / "run" / "probe_cache")) == sorted(
        f"{target}-{split}-{stl['checkpoint_sha256'][:16]}.pt"
        for target in ("stl10", "tiny_imagenet") for split in ("train", "test"))


def test_probing_leaves_every_backbone_weight_and_batchnorm_statistic_bit_identical(tmp_path, monkeypatch):
    make_stl10(tmp_path / "data", n_train=10, n_test=6)
    checkpoint = save_checkpoint(tmp_path / "run")
    frozen = []
    load_frozen = probe.load_frozen
    monkeypatch.setattr(probe, "load_frozen", lambda *a: frozen.append(load_frozen(*a)) or frozen[-1])
    run_probe(checkpoint, "stl10", tmp_path / "data")
    saved = torch.load(checkpoint, weights_only=True)["model"]
    after = frozen[0].model.state_dict()
    assert sorted(after) == sorted(saved)
    assert all(torch.equal(after[name], saved[name]) for name in saved)
    assert not frozen[0].model.training


def test_features_are_the_eval_mode_pooled_vectors_and_a_network_in_train_mode_is_not_touched():
    torch.manual_seed(0)
    model = build_model("resnet8", 10)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
    model.train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    images = np.random.default_rng(0).integers(0, 256, size=(5, 48, 48, 3), dtype=np.uint8)
    spec = InputSpec(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    features = probe.pooled_features(model, images, spec, batch_size=2)
    assert model.training  # the caller's mode is given back
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.eval()(x, is_feat=True)[0][-1]
    assert features.shape == (5, 64) and torch.allclose(features, expected, rtol=0, atol=1e-5)


class SelfUpdating(nn.Module):
    """A network whose forward changes its own buffer (what a BatchNorm in train mode does)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("seen", torch.zeros(1))

    def forward(self, x, is_feat=False):
        self.seen += 1
        pooled = x.mean(dim=(2, 3))
        return [pooled], pooled


def test_a_network_that_changes_while_features_are_computed_is_refused():
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(RuntimeError, match="seen"):
        probe.pooled_features(SelfUpdating(), images, InputSpec(32, (0.5,) * 3, (0.5,) * 3))


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_probe_top1_is_reproducible_for_a_seed_with_or_without_the_cache(tmp_path, monkeypatch):
    checkpoint = save_checkpoint(tmp_path / "run", classes=10, dataset="fashion_mnist")
    flags = ["--subset", "600", "--test_subset", "300", "--epochs", "10", "--batch_size", "64"]
    first = run_probe(checkpoint, "fashion_mnist", tmp_path, *flags, "--cache", tmp_path / "cache1")
    fresh = run_probe(checkpoint, "fashion_mnist", tmp_path, *flags, "--cache", tmp_path / "cache2")
    monkeypatch.setattr(probe, "pooled_features", lambda *a, **k: pytest.fail("features recomputed"))
    cached = run_probe(checkpoint, "fashion_mnist", tmp_path, *flags, "--cache", tmp_path / "cache1")
    assert first == fresh == cached
    assert (first["train_images"], first["test_images"], first["normalisation"]) == (600, 300, "fashion_mnist")
    assert first["top1"] > 20  # random weights, 10 epochs on 600 images: well above the 10% of chance
    other_seed = run_probe(checkpoint, "fashion_mnist", tmp_path, *flags, "--cache", tmp_path / "cache1", "--seed", "1")
    assert other_seed["seed"] == 1 and json.loads((tmp_path / "run" / "probe.json").read_text()) == \
        {"fashion_mnist": other_seed}


def test_a_cache_under_another_key_is_recomputed(tmp_path, monkeypatch):
    make_stl10(tmp_path / "data", n_train=10, n_test=6)
    checkpoint = save_checkpoint(tmp_path / "run")
    first = run_probe(checkpoint, "stl10", tmp_path / "data")
    cache = tmp_path / "run" / "probe_cache" / f"stl10-train-{first['checkpoint_sha256'][:16]}.pt"
    content = torch.load(cache, weights_only=True)
    content["key"]["input"][0] = 64
    content["features"] = torch.zeros_like(content["features"])
    torch.save(content, cache)
    computed = []
    pooled_features = probe.pooled_features
    monkeypatch.setattr(probe, "pooled_features", lambda *a, **k: computed.append(1) or pooled_features(*a, **k))
    assert run_probe(checkpoint, "stl10", tmp_path / "data") == first
    assert computed == [1]  # the train split only: the test split's cache is still its own


# ---- bad input: one line naming what was expected where -----------------------------------------------------------
def one_line(error):
    text = str(error.value)
    assert "\n" not in text
    return text


def offline(*args, **kwargs):
    raise OSError("no network")


def test_missing_stl10_names_the_folder_the_files_and_the_url(tmp_path, monkeypatch):
    monkeypatch.setattr(stl10, "download_stl10", offline)
    with pytest.raises(UserError) as caught:
        run_probe(save_checkpoint(tmp_path / "run"), "stl10", tmp_path / "data")
    text = one_line(caught)
    assert os.path.join(str(tmp_path / "data"), "stl10_binary") in text
    assert "train_X.bin" in text and stl10.STL10_URL in text and "no network" in text


def test_missing_tiny_imagenet_names_the_folder_its_layout_and_the_url(tmp_path):
    with pytest.raises(UserError) as caught:
        run_probe(save_checkpoint(tmp_path / "run"), "tiny_imagenet", tmp_path / "data")
    text = one_line(caught)
    assert os.path.join(str(tmp_path / "data"), "tiny-imagenet-200") in text
    assert "val_annotations.txt" in text and tiny_imagenet.TINY_IMAGENET_URL in text


@pytest.mark.parametrize("damage, named, says", [
    (lambda folder: open(os.path.join(folder, "train_X.bin"), "ab").write(b"\0" * 5), "train_X.bin", "27648"),
    (lambda folder: open(os.path.join(folder, "test_y.bin"), "ab").write(b"\x03"), "test_y.bin", "5 labels for"),
    (lambda folder: open(os.path.join(folder, "train_y.bin"), "wb").write(bytes([1, 2, 11, 4, 5, 6])), "train_y.bin",
     "label 11"),
])
def test_malformed_stl10_files_are_one_line_naming_the_file(tmp_path, damage, named, says):
    make_stl10(tmp_path)
    damage(os.path.join(str(tmp_path), "stl10_binary"))
    with pytest.raises(UserError) as caught:
        for train in (True, False):
            stl10.load_stl10(str(tmp_path), train, download=False)
    text = one_line(caught)
    assert os.path.join(str(tmp_path), "stl10_binary", named) in text and says in text


def test_a_val_annotation_naming_an_unknown_wnid_is_one_line_naming_the_file_and_line(tmp_path):
    folder, _ = make_tiny_imagenet(tmp_path)
    path = os.path.join(folder, "val", "val_annotations.txt")
    lines = open(path).read().splitlines()
    lines[3] = lines[3].replace(WNIDS[0], "n99999999")
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(UserError) as caught:
        tiny_imagenet.load_tiny_imagenet(str(tmp_path), train=False)
    text = one_line(caught)
    assert path in text and "line 4" in text and "n99999999" in text and "wnids.txt" in text


def test_the_command_prints_one_error_line_for_missing_data(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "run")
    done = subprocess.run([sys.executable, "-m", "helper.probe", checkpoint, "--target", "tiny_imagenet",
                           "--data_root", str(tmp_path / "nowhere"), "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: Tiny-ImageNet not found")
