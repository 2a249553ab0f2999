"""Linear-probe transfer (CRD, Tian et al. ICLR 2020, Table 4): how well a network's representation serves another
dataset, with the network frozen.

    python -m helper.probe CKPT --target stl10|tiny_imagenet|cifar10|cifar100|fashion_mnist [--data_root ./data]

The network is built and loaded as helper.evaluate does (architecture, class count and training dataset from the
checkpoint, else --arch / --num_classes / --trained_on) and kept in eval() throughout: BatchNorm normalises with its
running statistics and none of them is updated (a backbone left in train() while the head learns drifts; mdistiller
#59). The pooled pre-logit vector (`ModelOutput.pooled`, RepDistiller's feat[-1]) of every train and test image of the
target is computed once under torch.no_grad(), images scaled to [0, 1], resized to the network's input side (bilinear,
antialiased when shrinking) and normalised as the checkpoint was trained (helper.student.teacher.expected_input), and
cached per (checkpoint sha256, target, split) under --cache. A linear classifier (nn.Linear) is trained on the cached
train features and scored on the test features; its top-1 (%) goes to `probe.json` beside the checkpoint, one key per
target, merged with the targets already there.

Where the protocol and the defaults come from:
- CRD's "Transferability of representations" experiment (Table 4): the network frozen, a linear classifier trained on
  its last feature layer (the one before the logits) for 10-way STL-10 / 200-way Tiny-ImageNet classification, all
  images downsampled to 32x32 (the CIFAR networks' side).
- The optimiser settings are not published (RepDistiller issue #44 asks for them; unanswered). Defaults here: SGD,
  momentum 0.9, lr 0.1 annealed by cosine to 0 over 100 epochs, batch 256, no weight decay (issue 20 of this
  repository: none by default), head initialised N(0, 0.01) with zero bias, seed 0: a common linear-evaluation recipe,
  our choice. For comparison, the DCD code's Table-4 transfer script (giakoumoglou/distillers, transfer_student.py)
  uses SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 64, the same N(0, 0.01) head, with epochs and milestones
  that differ between its versions (100 epochs at a constant lr; 120 epochs x0.1 at 30, 60, 90), and trains with the
  backbone in train() so BatchNorm's statistics move; its 120-epoch optimiser here is
  `--learning_rate 0.05 --lr_schedule step --lr_decay_epochs 30,60,90 --epochs 120 --batch_size 64 --weight_decay 5e-4`.
On the CPU the result is bit-for-bit the same for the same seed and cached features.
"""
import argparse
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.datasets.utils import download_and_extract_archive

from dataset import class_balanced_subset, cifar100, fashion_mnist, stl10, tiny_imagenet
from distiller_zoo.base import ModelOutput
from helper.engine.lr import lr_at_epoch, parse_decay_epochs, set_lr
from helper.errors import UserError
from helper.options import run_cli
from helper.runs.files import (
    file_sha256,
    load_weights,
    save_atomic,
    write_text_atomic,
)
from helper.student.teacher import DATASET_NORMALISATION, InputSpec, dataset_input, expected_input, fmt
from helper.tools.evaluate import Fact, read_checkpoint, recorded, resolve_classes
from helper.util import check_at_least, resolve_device
from models import build_model, input_size
from models.external import is_external

log = logging.getLogger("kd")
PROBE_FILE = "probe.json"
CACHE_VERSION = 1
DEFAULT_TRAINED_ON = "cifar100"
TRAINED_CLASSES = {"cifar100": cifar100.NUM_CLASSES, "fashion_mnist": fashion_mnist.NUM_CLASSES, "imagenet": 1000}
TRAINED_SIDE = {"imagenet": 224}  # the others: 32


# ---- CIFAR-10 (torchvision's `cifar-10-batches-py`, read with CIFAR-100's restricted unpickler) -------------------
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_BATCHES = {True: [f"data_batch_{i}" for i in range(1, 6)], False: ["test_batch"]}


def ensure_cifar10(data_root):
    """`<data_root>/cifar-10-batches-py`, downloaded (MD5 checked) when its six batches are missing."""
    folder = os.path.join(data_root, CIFAR10_FOLDER)
    names = CIFAR10_BATCHES[True] + CIFAR10_BATCHES[False]
    if all(os.path.isfile(os.path.join(folder, name)) for name in names):
        return folder
    expected = f"{folder}/{{{','.join(names)}}}"
    try:
        download_cifar10(data_root)
    except (OSError, RuntimeError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise UserError(f"CIFAR-10 not found: expected {expected}, and download from {CIFAR10_URL} failed "
                        f"({reason}); download and unpack it into {data_root} by hand, or pass --data_root") from error
    if not all(os.path.isfile(os.path.join(folder, name)) for name in names):
        raise UserError(f"the CIFAR-10 archive from {CIFAR10_URL} did not produce {expected}; delete it and retry, "
                        "or pass --data_root")
    return folder


def download_cifar10(data_root):
    download_and_extract_archive(CIFAR10_URL, download_root=data_root, md5=CIFAR10_MD5)


def load_cifar10(data_root, train):
    """-> images uint8 [N, 32, 32, 3] (HWC), labels int64 [N] in 0..9; N = 50000 train / 10000 test."""
    folder = ensure_cifar10(data_root)
    parts = [read_cifar10_batch(os.path.join(folder, name)) for name in CIFAR10_BATCHES[train]]
    images = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.concatenate([p[1] for p in parts])


def read_cifar10_batch(path):
    """One pickled batch -> (data uint8 [N, 3072], labels int64 [N]); nothing but plain data and arrays is built."""
    def broken(what):
        return UserError(f"{path} is not a CIFAR-10 batch ({what}); delete {os.path.dirname(path)} and rerun to "
                         "download it again, or pass --data_root")
    try:
        with open(path, "rb") as f:
            batch = cifar100._CifarUnpickler(f, encoding="bytes").load()
    except Exception as error:  # noqa: BLE001 - garbage bytes raise any of a dozen types; each means "not a batch"
        reason = " ".join(str(error).split()) or type(error).__name__
        raise broken(f"unreadable pickle: {reason}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise broken("expected a dict with b'data' and b'labels'")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
            or not len(data):
        raise broken("b'data' is not a uint8 array [N, 3072]")
    if not isinstance(labels, list) or len(labels) != len(data) or \
            not all(type(label) is int and 0 <= label < 10 for label in labels):
        raise broken(f"b'labels' is not {len(data)} integers in 0..9")
    return data, np.asarray(labels, dtype=np.int64)


# ---- targets ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A dataset a representation is probed on."""
    num_classes: int
    locate: Callable  # data_root -> the folder its files are in (downloaded when possible; else a one-line UserError)
    files: Callable   # (folder, train) -> the files the split is read from (their sizes and times key the cache)
    read: Callable    # (data_root, train) -> (images uint8 [N, H, W, 3], labels int64 [N])


def _prefixed_files(folder, prefix):
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder)) if name.startswith(prefix)]


def _tiny_imagenet_files(folder, train):
    paths = tiny_imagenet.split_samples(folder, train)[0]
    return [os.path.join(folder, "wnids.txt")] + \
        ([] if train else [os.path.join(folder, "val", "val_annotations.txt")]) + paths


TARGETS = {
    "stl10": Target(stl10.NUM_CLASSES, stl10.ensure_stl10,
                    lambda folder, train: list(stl10.split_files(folder, train)), stl10.load_stl10),
    "tiny_imagenet": Target(200, tiny_imagenet.find_tiny_imagenet, _tiny_imagenet_files,
                            tiny_imagenet.load_tiny_imagenet),
    "cifar10": Target(10, ensure_cifar10,
                      lambda folder, train: [os.path.join(folder, n) for n in CIFAR10_BATCHES[train]], load_cifar10),
    "cifar100": Target(cifar100.NUM_CLASSES, cifar100.ensure_cifar100,
                       lambda folder, train: [os.path.join(folder, "train" if train else "test")],
                       cifar100.load_cifar100),
    "fashion_mnist": Target(fashion_mnist.NUM_CLASSES, fashion_mnist.find_fashion_mnist,
                            lambda folder, train: _prefixed_files(folder, "train-" if train else "t10k-"),
                            fashion_mnist.load_fashion_mnist),
}


def data_fingerprint(folder, paths):
    """sha256 of the split's files' names, sizes and modification times: new or replaced data is a new key."""
    entries = []
    for path in paths:
        stat = os.stat(path)
        entries.append([os.path.relpath(path, folder), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps([os.path.abspath(folder), entries]).encode()).hexdigest()


# ---- flags --------------------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(prog="python -m helper.probe",
                                description="Linear-probe transfer of a frozen network's pooled features (CRD, "
                                            "Table 4); the test top-1 goes to probe.json beside the checkpoint.")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file (.pth)")
    p.add_argument("--target", required=True, choices=sorted(TARGETS), help="the dataset probed")
    p.add_argument("--data_root", type=str, default="./data",
                   help="folder holding stl10_binary/, tiny-imagenet-200/, cifar-10-batches-py/, cifar-100-python/ "
                        "or fashion-mnist/ (./data)")
    p.add_argument("--arch", type=str, default=None,
                   help="network name when neither the checkpoint nor its folder name records it")
    p.add_argument("--model_t", type=str, default=None, help="the same as --arch (train_student.py's spelling)")
    p.add_argument("--trained_on", type=str, default=None, choices=sorted(DATASET_NORMALISATION),
                   help="the dataset the checkpoint was trained on, which sets the input normalisation and side "
                        "(default: the checkpoint's record, else imagenet for a torchvision/timm weight file, else "
                        f"{DEFAULT_TRAINED_ON})")
    p.add_argument("--num_classes", type=int, default=None,
                   help="classes of the network's own classifier when the checkpoint does not tell")
    p.add_argument("--learning_rate", "--lr", type=float, default=0.1, help="SGD learning rate of the probe (0.1)")
    p.add_argument("--lr_schedule", choices=["cosine", "step"], default="cosine",
                   help="cosine to 0 over --epochs, or step: x--lr_decay_rate after each of --lr_decay_epochs (cosine)")
    p.add_argument("--lr_decay_epochs", type=str, default="30,60,90", help="step milestones, 1-based (30,60,90)")
    p.add_argument("--lr_decay_rate", type=float, default=0.1, help="step decay factor (0.1)")
    p.add_argument("--epochs", type=int, default=100, help="probe training epochs over the cached features (100)")
    p.add_argument("--batch_size", type=int, default=256, help="probe batch size (256)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (0.9)")
    p.add_argument("--weight_decay", type=float, default=0.0, help="SGD weight decay (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seeds the probe's initialisation and batch order (0)")
    p.add_argument("--subset", type=int, default=0,
                   help="probe with N class-balanced training images only (0 = all; a quick check, not the protocol)")
    p.add_argument("--test_subset", type=int, default=0, help="score on N class-balanced test images only (0 = all)")
    p.add_argument("--cache", type=str, default=None, metavar="DIR",
                   help="folder of the cached features (default: <checkpoint folder>/probe_cache)")
    p.add_argument("--feature_batch_size", type=int, default=256, help="images per forward pass of the network (256)")
    p.add_argument("--device", type=str, default="auto", help="cpu, cuda, cuda:N or auto (auto)")
    p.add_argument("--json", action="store_true", help="print the probe.json entry as one JSON line")
    return p


def check_flags(args):
    check_at_least(args, (("epochs", 1), ("batch_size", 1), ("feature_batch_size", 1), ("subset", 0),
                          ("test_subset", 0), ("num_classes", 1)))
    for flag, positive in (("learning_rate", True), ("lr_decay_rate", True), ("momentum", False),
                           ("weight_decay", False)):
        value = getattr(args, flag)
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise UserError(f"--{flag} must be a finite number {'above' if positive else 'at least'} 0, got {value}")
    args.lr_decay_epochs = parse_decay_epochs(args.lr_decay_epochs)


# ---- the frozen network -------------------------------------------------------------------------------------------
@dataclass
class Frozen:
    """The network as the probe sees it."""
    model: nn.Module
    arch: Fact
    trained_on: Fact
    spec: InputSpec       # the side and normalisation of its inputs
    spec_source: str
    sha256: str


def resolve_trained_on(ckpt, flag, path, arch):
    """--trained_on, else the checkpoint's dataset (ours: 'dataset'; RepDistiller's: opt.dataset), else imagenet for a
    torchvision/timm weight file (a plain state_dict: the library's pretrained weights), else cifar100."""
    saved = recorded(ckpt, "dataset") or (recorded(ckpt, "opt") or {}).get("dataset")
    if flag is not None:
        if saved in DATASET_NORMALISATION and flag != saved:
            raise UserError(f"--trained_on {flag}, but {path} records {saved}; drop --trained_on")
        return Fact(flag, "--trained_on")
    if saved is not None:
        if saved not in DATASET_NORMALISATION:
            raise UserError(f"{path} was trained on {saved!r}, whose normalisation is unknown here; pass --trained_on "
                            f"({' | '.join(sorted(DATASET_NORMALISATION))})")
        return Fact(saved, "checkpoint")
    if is_external(arch) and not (isinstance(ckpt, dict) and "arch" in ckpt):
        return Fact("imagenet", f"{arch.split(':')[0]}'s pretrained weights")
    return Fact(DEFAULT_TRAINED_ON, "assumed: not in the checkpoint")


def load_frozen(args, device):
    """Build and load the checkpoint's network (eval mode, no gradients) and resolve what it expects to see."""
    path = args.checkpoint
    ckpt, state_dict, arch = read_checkpoint(args)
    trained_on = resolve_trained_on(ckpt, args.trained_on, path, arch.value)
    classes = resolve_classes(ckpt, state_dict, arch.value, args.num_classes, path) or \
        Fact(TRAINED_CLASSES[trained_on.value], f"assumed: the classes of {trained_on.value}")
    model = build_model(arch.value, classes.value)
    load_weights(model, state_dict, path, arch.value)
    data_input = dataset_input(trained_on.value, TRAINED_SIDE.get(trained_on.value, 32))
    spec, source = expected_input(ckpt, arch.value, path, data_input, flag="--input")
    fixed = input_size[arch.value]
    if fixed is not None and fixed != spec.size:
        raise UserError(f"{arch.value} in {path} expects {fixed}px inputs but would see {spec.size}px ({source}); "
                        "pass the --trained_on it was trained on")
    model.eval().requires_grad_(False)
    return Frozen(model.to(device), arch, trained_on, spec, source, file_sha256(path))


def normalisation_name(spec):
    """The dataset whose mean/std the inputs are normalised with, else the numbers."""
    for name, (mean, std) in DATASET_NORMALISATION.items():
        if all(math.isclose(a, b, abs_tol=1e-7) for a, b in zip(spec.mean + spec.std, tuple(mean) + tuple(std))):
            return name
    return f"mean {fmt(spec.mean)} std {fmt(spec.std)}"


def pooled_features(model, images, spec, batch_size=256, device="cpu"):
    """uint8 images [N, H, W, 3] -> the frozen network's pooled pre-logit vectors, float32 [N, D] on the CPU.

    Images are scaled to [0, 1], resized to spec.size (bilinear, antialiased when shrinking), normalised with
    spec.mean/std and passed through the network in eval() under torch.no_grad(); its train/eval mode is restored after.
    Every parameter and buffer (BatchNorm's running statistics included) is checked bit-identical afterwards."""
    before = {name: value.detach().clone() for name, value in model.state_dict().items()}
    was_training = model.training
    model.eval()
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
    pooled = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
                x = x.permute(0, 3, 1, 2).float().div_(255)  # [B, 3, H, W] in [0, 1]
                if x.shape[-2:] != (spec.size, spec.size):
                    x = F.interpolate(x, size=(spec.size, spec.size), mode="bilinear", align_corners=False,
                                      antialias=x.shape[-1] > spec.size)
                feats, logits = model((x - mean) / std, is_feat=True)
                vector = ModelOutput(logits, feats).pooled
                if vector.dim() != 2:
                    raise UserError(f"the network's pooled feature is {list(vector.shape)}, not [B, D]: it cannot be "
                                    "probed linearly")
                pooled.append(vector.float().cpu())
    finally:
        model.train(was_training)
    changed = [name for name, value in model.state_dict().items() if not bit_equal(value, before[name])]
    if changed:
        raise RuntimeError(f"the frozen network changed while its features were computed: {', '.join(changed[:3])}")
    return torch.cat(pooled)


def bit_equal(a, b):
    if a.is_floating_point():
        return a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
    return torch.equal(a, b)


# ---- cached features ----------------------------------------------------------------------------------------------
def split_features(frozen, target_name, train, args, device, cache_dir):
    """(features float32 [N, D], labels int64 [N]) of one split: from the cache when its key matches, else computed
    and cached (atomically)."""
    target = TARGETS[target_name]
    split = "train" if train else "test"
    subset = args.subset if train else args.test_subset
    folder = target.locate(args.data_root)
    key = {"version": CACHE_VERSION, "checkpoint_sha256": frozen.sha256, "arch": frozen.arch.value,
           "target": target_name, "split": split, "subset": subset, "features": "pooled",
           "input": [frozen.spec.size, list(frozen.spec.mean), list(frozen.spec.std)],
           "data": data_fingerprint(folder, target.files(folder, train))}
    name = f"{target_name}-{split}" + (f"-subset{subset}" if subset else "") + f"-{frozen.sha256[:16]}.pt"
    path = os.path.join(cache_dir, name)
    cached = read_cache(path, key)
    if cached is not None:
        log.info("%s %s features read from %s", target_name, split, path)
        return cached
    images, labels = target.read(args.data_root, train)
    if subset > 0:
        keep = class_balanced_subset(labels, subset)
        images, labels = images[keep], labels[keep]
    log.info("computing %s %s features of %d images", target_name, split, len(labels))
    features = pooled_features(frozen.model, images, frozen.spec, args.feature_batch_size, device)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    try:
        save_atomic({"key": key, "features": features, "labels": labels}, path)
    except OSError as e:
        raise UserError(f"cannot write the feature cache {path} (--cache): {e.strerror or e}") from None
    return features, labels


def read_cache(path, key):
    """(features, labels) of a cache file whose key is `key`; None when absent, unreadable or another key's."""
    if not os.path.isfile(path):
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged cache is recomputed
        log.info("feature cache %s is unreadable; recomputing it", path)
        return None
    if not isinstance(content, dict) or content.get("key") != key or \
            not torch.is_tensor(content.get("features")) or not torch.is_tensor(content.get("labels")):
        log.info("feature cache %s holds other features (its key differs); recomputing it", path)
        return None
    return content["features"], content["labels"]


# ---- the linear probe ---------------------------------------------------------------------------------------------
def train_linear(features, labels, num_classes, args, device="cpu"):
    """nn.Linear(D, num_classes) trained by SGD on features [N, D] with cross-entropy; deterministic for args.seed."""
    generator = torch.Generator().manual_seed(args.seed)
    head = nn.Linear(features.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=generator)
        head.bias.zero_()
    head.to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    x, y = features.to(device), labels.to(device)
    for epoch in range(1, args.epochs + 1):
        set_lr(optimizer, lr_at_epoch(epoch, args))
        order = torch.randperm(len(y), generator=generator).to(device)
        for start in range(0, len(y), args.batch_size):
            batch = order[start:start + args.batch_size]
            loss = F.cross_entropy(head(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return head.eval()


def top_k(head, features, labels, k, device="cpu"):
    """Top-k accuracy (%) of the probe on features [N, D]."""
    with torch.no_grad():
        logits = head(features.to(device))
        predicted = logits.topk(min(k, logits.shape[1]), dim=1).indices
        correct = predicted.eq(labels.to(device).view(-1, 1)).any(dim=1).sum().item()
    return 100.0 * correct / len(labels)


# ---- probe.json ---------------------------------------------------------------------------------------------------
def probe_file(checkpoint):
    return os.path.join(os.path.dirname(os.path.abspath(checkpoint)), PROBE_FILE)


def read_probe_file(path):
    """What probe.json holds ({} when absent); a file that is not a JSON object is a one-line error."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({' '.join(str(e).split())}); move it away and rerun") from None
    if not isinstance(content, dict):
        raise UserError(f"{path} holds {type(content).__name__}, not a JSON object of targets; move it away and rerun")
    return content


def write_probe_entry(checkpoint, target, entry):
    """Merge {target: entry} into probe.json beside the checkpoint (atomically) -> its path."""
    path = probe_file(checkpoint)
    content = read_probe_file(path)
    content[target] = entry
    try:
        write_text_atomic(path, json.dumps(content, indent=2, sort_keys=True) + "\n")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return path


# ---- the command --------------------------------------------------------------------------------------------------
def probe(args):
    """Probe args.checkpoint on args.target -> the probe.json entry (not yet written)."""
    device = resolve_device(args.device)
    frozen = load_frozen(args, device)
    cache_dir = args.cache or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "probe_cache")
    train_x, train_y = split_features(frozen, args.target, True, args, device, cache_dir)
    test_x, test_y = split_features(frozen, args.target, False, args, device, cache_dir)
    head = train_linear(train_x, train_y, TARGETS[args.target].num_classes, args, device)
    return {"top1": top_k(head, test_x, test_y, 1, device), "top5": top_k(head, test_x, test_y, 5, device),
            "checkpoint": args.checkpoint, "checkpoint_sha256": frozen.sha256, "arch": frozen.arch.value,
            "trained_on": frozen.trained_on.value, "features": "pooled", "feature_dim": int(train_x.shape[1]),
            "train_images": len(train_y), "test_images": len(test_y), "lr": args.learning_rate,
            "lr_schedule": args.lr_schedule,
            "lr_decay_epochs": args.lr_decay_epochs if args.lr_schedule == "step" else None,
            "lr_decay_rate": args.lr_decay_rate if args.lr_schedule == "step" else None,
            "epochs": args.epochs, "batch_size": args.batch_size, "momentum": args.momentum,
            "weight_decay": args.weight_decay, "seed": args.seed, "input_size": frozen.spec.size,
            "normalisation": normalisation_name(frozen.spec), "input_source": frozen.spec_source,
            "mean": list(frozen.spec.mean), "std": list(frozen.spec.std), "assumed": assumptions(frozen)}


def assumptions(frozen):
    """The facts the checkpoint did not record."""
    return [f"{name}: {fact.value} ({fact.source})" for name, fact in (("arch", frozen.arch),
                                                                       ("trained_on", frozen.trained_on))
            if fact.source.startswith("assumed")]


def report(target, entry, path):
    schedule = ("cosine" if entry["lr_schedule"] == "cosine" else
                f"step x{entry['lr_decay_rate']} at {','.join(map(str, entry['lr_decay_epochs']))}")
    lines = [f"checkpoint  {entry['checkpoint']} ({entry['arch']}, trained on {entry['trained_on']})",
             f"input       {entry['input_size']}px, {entry['normalisation']} normalisation ({entry['input_source']})",
             f"target      {target}: {entry['train_images']} train / {entry['test_images']} test images, "
             f"pooled features [{entry['feature_dim']}]",
             f"probe       SGD lr {entry['lr']} {schedule}, {entry['epochs']} epochs, batch {entry['batch_size']}, "
             f"momentum {entry['momentum']}, weight decay {entry['weight_decay']}, seed {entry['seed']}",
             f"top-1       {entry['top1']:.2f}",
             f"top-5       {entry['top5']:.2f}",
             f"written     {path} [{target}]"]
    return "\n".join(lines + [f"assumed     {note}" for note in entry["assumed"]])


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_flags(args)
    entry = probe(args)
    path = write_probe_entry(args.checkpoint, args.target, entry)
    print(json.dumps({args.target: entry}) if args.json else report(args.target, entry, path))
    return entry


if __name__ == "__main__":
    run_cli(main)
