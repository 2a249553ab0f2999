"""Evaluate a checkpoint without training: top-1, top-5 and loss on a test set, optionally per class.

    python -m helper.evaluate CKPT [--dataset ...] [--data_root ...] [--device ...] [--per_class F.csv] [--json]

CKPT may be any checkpoint this repository writes (teacher or student, with the evaluation head it recorded, e.g.
SimKD's projector and teacher classifier), a RepDistiller `{'model': state_dict}` or `*_last.pth` file (its
argparse.Namespace options included), a torchvision or timm weight file (a plain state_dict, with --arch, e.g.
--arch torchvision:resnet18) or a DDP file whose keys start with `module.`. The architecture, dataset and class count
are read from the checkpoint where it records them; the report says which ones were assumed. The network sees the
test images as a teacher of train_student.py would (helper/student/teacher.py: re-normalised and resized for a
torchvision/timm file that expects another input; --input changes it).
"""
import argparse
import csv
import json
import os
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

import distiller_zoo  # noqa: F401  registers every method (a checkpoint's evaluation head)
from dataset import DATASETS, build_loaders
from distiller_zoo.base import get_distiller_class
from helper.engine.loop import validate
from helper.errors import UserError
from helper.options import run_cli
from helper.runs.files import extract_state_dict, load_checkpoint, load_weights, write_output
from helper.student.build import probe_shapes
from helper.student.teacher import (
    adapted,
    dataset_input,
    describe_input,
    expected_input,
    parse_teacher_input,
    teacher_name_from_path,
)
from helper.util import check_at_least, is_integer, resolve_device
from models import build_model, check_model_name, input_size, model_dict

DEFAULT_DATASET = "cifar100"
DEFAULT_BATCH = {"imagenet": 256}  # other datasets: 64, the training default


def build_parser():
    p = argparse.ArgumentParser(prog="python -m helper.evaluate",
                                description="Evaluate a checkpoint on a test set (no training).")
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint file (.pth)")
    p.add_argument("--arch", type=str, default=None,
                   help="network name (a model name, torchvision:<name> or timm:<name>), needed when neither the "
                        "checkpoint nor its folder name records it; refused when it contradicts the checkpoint")
    p.add_argument("--model_t", type=str, default=None, help="the same as --arch (train_student.py's spelling)")
    p.add_argument("--input", type=str, default="auto",
                   help="what the network sees: auto (its checkpoint's input_size/mean/std, else for a torchvision/"
                        "timm file the library's pretrained configuration, else the test images as they are), "
                        "dataset (the test images as they are) or a side in px (auto)")
    p.add_argument("--dataset", type=str, default=None,
                   help=f"{' | '.join(DATASETS)} (default: the checkpoint's, else {DEFAULT_DATASET})")
    p.add_argument("--data_root", type=str, default=None,
                   help="folder holding the datasets (default: the checkpoint's run options, else ./data)")
    p.add_argument("--num_classes", type=int, default=None,
                   help="classes of the network when the checkpoint and its classifier do not tell "
                        "(default: the dataset's)")
    p.add_argument("--device", type=str, default="auto", help="cpu, cuda, cuda:N or auto (auto)")
    p.add_argument("--batch_size", type=int, default=None, help="test batch size (64; 256 for imagenet)")
    p.add_argument("--num_workers", type=int, default=8, help="data loader worker processes for imagenet (8)")
    p.add_argument("--test_subset", type=int, default=0,
                   help="evaluate on N class-balanced test samples only (0 = the whole test set)")
    p.add_argument("--no_head", action="store_true",
                   help="evaluate the bare network even when the checkpoint records an evaluation head (SimKD)")
    p.add_argument("--per_class", type=str, default=None, metavar="CSV", help="write per-class accuracy to CSV")
    p.add_argument("--confusion", type=str, default=None, metavar="CSV", help="write the confusion matrix to CSV")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line instead of the report")
    return p


@dataclass
class Fact:
    """A value and where it came from: 'checkpoint', a flag such as '--arch', or an 'assumed ...' phrase."""
    value: object
    source: str


# ---- reading the file -------------------------------------------------------------------------------------------
def recorded(ckpt, key):
    """ckpt[key] for a self-describing checkpoint (a dict), else None."""
    return ckpt.get(key) if isinstance(ckpt, dict) else None


def plain_options(ckpt):
    """The checkpoint with RepDistiller's `opt` (an argparse.Namespace in its *_last.pth) as a dict, like ours."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("opt"), argparse.Namespace):
        return {**ckpt, "opt": vars(ckpt["opt"])}
    return ckpt


def is_positive_int(value):
    return is_integer(value) and value > 0


# What the recorded fields this command reads must be (absent or None: not recorded): what a damaged or foreign
# file holds there instead is one line naming the field.
RECORDED_FIELDS = {"arch": (lambda v: isinstance(v, str) and v in model_dict, "a model name"),
                   "dataset": (lambda v: isinstance(v, str), "a dataset name"),
                   "eval_head": (lambda v: isinstance(v, str), "a method name"),
                   "num_classes": (is_positive_int, "a positive integer"),
                   "opt": (lambda v: isinstance(v, dict), "an object (the run's options)")}


def check_recorded_fields(ckpt, path):
    """One-line errors for recorded fields that are not what RECORDED_FIELDS says."""
    for key, (valid, what) in RECORDED_FIELDS.items():
        value = recorded(ckpt, key)
        if value is not None and not valid(value):
            raise UserError(f"{path}: the checkpoint's {key} field is {value!r}, not {what}")


def arch_flag(args):
    """(--arch or --model_t, the flag's name), (None, None) without either; the two must agree."""
    if args.arch is not None and args.model_t is not None and args.arch != args.model_t:
        raise UserError(f"--arch {args.arch} and --model_t {args.model_t} disagree; give one of them")
    if args.arch is not None:
        return args.arch, "--arch"
    return (args.model_t, "--model_t") if args.model_t is not None else (None, None)


def resolve_arch(ckpt, path, flag, flag_name="--arch"):
    """The architecture: the checkpoint's, else --arch (--model_t), else the run folder's prefix (RepDistiller's
    layout)."""
    saved = recorded(ckpt, "arch")
    if saved is not None and flag is not None and flag != saved:
        raise UserError(f"{flag_name} {flag} but {path} holds a {saved!r} network; drop {flag_name}")
    if saved is not None:
        return Fact(saved, "checkpoint")
    if flag is not None:
        check_model_name(flag, flag_name)
        return Fact(flag, flag_name)
    from_folder = teacher_name_from_path(path)
    if from_folder not in model_dict:
        raise UserError(f"{path} does not record its architecture and its folder name does not start with a model "
                        "name; pass --arch (or --model_t), e.g. --arch resnet32x4 or --arch torchvision:resnet18")
    return Fact(from_folder, f"assumed from the folder name {os.path.basename(os.path.dirname(os.path.abspath(path)))}")


def resolve_dataset(ckpt, flag, path):
    """--dataset, else the checkpoint's; a --dataset other than the one the checkpoint records is refused."""
    saved = recorded(ckpt, "dataset")
    if flag is not None:
        if saved is not None and flag != saved:
            raise UserError(f"--dataset {flag}, but {path} was trained on {saved}; drop --dataset (or pass "
                            f"--dataset {saved})")
        return Fact(flag, "--dataset")
    if saved is not None:
        return Fact(saved, "checkpoint")
    return Fact(DEFAULT_DATASET, "assumed: not in the checkpoint")


# ---- data and checks --------------------------------------------------------------------------------------------
def data_options(args, ckpt, dataset, device, train_subset):
    """Options for dataset.build_loaders: the test split as training validated it (same loader kind)."""
    run = recorded(ckpt, "opt") or {}
    return SimpleNamespace(
        dataset=dataset, data_root=args.data_root or run.get("data_root", "./data"),
        batch_size=args.batch_size or DEFAULT_BATCH.get(dataset, 64), num_workers=args.num_workers,
        subset=train_subset, test_subset=args.test_subset, loader=run.get("loader", "auto"),
        gpu_loader=bool(run.get("gpu_loader", False)), device=device, seed=0, distributed=False,
        no_progress=not sys.stderr.isatty())


def classifier_key(model):
    """state_dict key of the network's classifier weight: its last nn.Linear (RepDistiller's nets end in one)."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return f"{names[-1]}.weight" if names else None


def resolve_classes(ckpt, state_dict, arch, flag, path):
    """Classes of the network: the checkpoint's, else its classifier's rows, else --num_classes (or None)."""
    saved = recorded(ckpt, "num_classes")
    if saved is not None:
        fact = Fact(saved, "checkpoint")
    else:
        key = classifier_key(build_model(arch, 1))
        if key in state_dict and state_dict[key].dim() == 2:
            fact = Fact(int(state_dict[key].shape[0]), f"rows of {key}")
        else:
            return Fact(flag, "--num_classes") if flag is not None else None
    if flag is not None and flag != fact.value:
        raise UserError(f"--num_classes {flag} but {path} classifies {fact.value} classes; drop --num_classes")
    return fact


def check_classes_fit(path, classes, data, dataset, trained_on):
    """A dataset with another class count than the network's is a one-line error naming --dataset."""
    if classes.value != data.num_classes:
        raise UserError(f"{path} classifies {classes.value} classes but --dataset {dataset.value} has "
                        f"{data.num_classes}; pass the --dataset it was trained on{trained_on}")


def check_input_size_fits(path, arch, seen, data, dataset, trained_on):
    """A network built for one input side that would see another is a one-line error naming --dataset."""
    size = input_size[arch.value]
    if size is not None and size != seen.size:
        gives = f"gives {data.input_size}px" if seen.size == data.input_size else \
            f"gives {data.input_size}px, resized to {seen.size}px"
        raise UserError(f"{arch.value} in {path} expects {size}px inputs but --dataset {dataset.value} {gives}; pass "
                        f"the --dataset it was trained on{trained_on} or --input {size}")


# ---- the evaluation network -------------------------------------------------------------------------------------
def method_options(method, saved, device):
    """The method's options for rebuilding its Distiller: its flag defaults overridden by the run's options."""
    parser = argparse.ArgumentParser(add_help=False)
    method.add_args(parser)
    options = vars(parser.parse_args([]))
    options.update(saved)
    options["device"] = device
    return SimpleNamespace(**options)


def head_network(ckpt, student, data, device, path):
    """The network training validated: the method's Distiller, rebuilt from the checkpoint's options on a teacher
    of `teacher_arch` (random weights: what the head needs is in ckpt['distiller']), then eval_model(student)."""
    name = ckpt["eval_head"]
    method = get_distiller_class(name)
    teacher_arch = recorded(ckpt, "teacher_arch")
    if not isinstance(teacher_arch, str) or teacher_arch not in model_dict or \
            not isinstance(recorded(ckpt, "distiller"), dict):
        raise UserError(f"{path} records the evaluation head {name!r} but not its teacher_arch and distiller "
                        "state; evaluate the bare network with --no_head")
    teacher = build_model(teacher_arch, data.num_classes).to(device).eval()
    probe = probe_shapes(student, teacher, method.needs, data.input_size, data.n_data, data.num_classes, device,
                         data.train_targets)
    distiller = method(method_options(method, ckpt.get("opt") or {}, device), probe, student, teacher).to(device)
    load_weights(distiller, ckpt["distiller"], path, f"the {name} head ({teacher_arch} teacher)")
    return distiller.eval_model(student)


class PredictionRecorder(nn.Module):
    """Passes a network's logits through and keeps each batch's top-1 prediction (as helper.util.accuracy ranks)."""

    def __init__(self, network):
        super().__init__()
        self.network = network
        self.predictions = []

    def forward(self, images):
        logits = self.network(images)
        self.predictions.append(logits.topk(1, dim=1).indices[:, 0].cpu())
        return logits


class TargetRecorder:
    """A loader that keeps each batch's targets as validation reads it."""

    def __init__(self, loader):
        self.loader = loader
        self.targets = []

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for items in self.loader:
            self.targets.append(items[1].cpu())
            yield items


def confusion_matrix(targets, predictions, num_classes):
    """[C, C] int64 counts, rows the true class, columns the predicted one."""
    index = targets.long() * num_classes + predictions.long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def write_per_class(path, confusion):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "images", "correct", "top1"])
        for c in range(confusion.shape[0]):
            images, correct = int(confusion[c].sum()), int(confusion[c, c])
            writer.writerow([c, images, correct, f"{100.0 * correct / images:.4f}" if images else ""])


def write_confusion(path, confusion):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true\\predicted"] + list(range(confusion.shape[1])))
        for c in range(confusion.shape[0]):
            writer.writerow([c] + confusion[c].tolist())


# ---- the command ------------------------------------------------------------------------------------------------
def evaluation_network(ckpt, network, data, device, path, no_head):
    """(network training validated, how the report describes its head)."""
    head = recorded(ckpt, "eval_head")
    if head is None:
        return network, "none (the network's own classifier)"
    if no_head:
        return network, f"none (--no_head; the checkpoint records the {head} head)"
    return (head_network(ckpt, network, data, device, path),
            f"{head} (the student through its method's evaluation head, from the checkpoint)")


def measure(network, data, opt):
    """helper.engine.loop.validate's (top-1, top-5, loss) and the confusion matrix of the same pass."""
    recorder, loader = PredictionRecorder(network), TargetRecorder(data.val_loader)
    top1, top5, loss = validate(loader, recorder, nn.CrossEntropyLoss(), opt)
    confusion = confusion_matrix(torch.cat(loader.targets), torch.cat(recorder.predictions), data.num_classes)
    return top1, top5, loss, confusion


def read_checkpoint(args):
    """(checkpoint dict, its state_dict, its architecture as a Fact) of args.checkpoint, checked: one line for a file
    that is not a checkpoint of a known network."""
    path = args.checkpoint
    ckpt = plain_options(load_checkpoint(path))
    check_recorded_fields(ckpt, path)
    try:
        state_dict = extract_state_dict(ckpt)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return ckpt, state_dict, resolve_arch(ckpt, path, *arch_flag(args))


def evaluate(args):
    """Evaluate args.checkpoint -> the result as a dict (the --json line); writes the CSVs asked for."""
    path = args.checkpoint
    ckpt, state_dict, arch = read_checkpoint(args)
    dataset = resolve_dataset(ckpt, args.dataset, path)
    classes = resolve_classes(ckpt, state_dict, arch.value, args.num_classes, path)
    use_head = recorded(ckpt, "eval_head") is not None and not args.no_head
    device = resolve_device(args.device)
    run = recorded(ckpt, "opt") or {}
    # The training split only sizes a head's memory banks (the run's --subset); otherwise one sample is loaded.
    opt = data_options(args, ckpt, dataset.value, device, run.get("subset", 0) if use_head else 1)
    data = build_loaders(opt)
    classes = classes or Fact(data.num_classes, f"assumed: the classes of {dataset.value}")
    trained_on = f" ({recorded(ckpt, 'dataset')})" if recorded(ckpt, "dataset") else ""
    check_classes_fit(path, classes, data, dataset, trained_on)
    network = build_model(arch.value, classes.value)
    load_weights(network, state_dict, path, arch.value)  # before the input size: a wrong --arch is named as such
    data_input = dataset_input(dataset.value, data.input_size)
    seen, seen_source = expected_input(ckpt, arch.value, path, data_input, args.input, flag="--input")
    check_input_size_fits(path, arch, seen, data, dataset, trained_on)
    network, head = evaluation_network(ckpt, adapted(network.to(device).eval(), data_input, seen).to(device), data,
                                       device, path, args.no_head)
    top1, top5, loss, confusion = measure(network, data, opt)
    if args.per_class:
        write_output(args.per_class, "--per_class", lambda out: write_per_class(out, confusion))
    if args.confusion:
        write_output(args.confusion, "--confusion", lambda out: write_confusion(out, confusion))
    return {"file": path, "arch": arch.value, "arch_source": arch.source, "dataset": dataset.value,
            "dataset_source": dataset.source, "num_classes": classes.value, "classes_source": classes.source,
            "head": ckpt["eval_head"] if use_head else None, "head_description": head,
            "input": f"{describe_input(seen, data_input)} ({seen_source})",
            "images": int(confusion.sum()), "top1": top1, "top5": top5, "loss": loss,
            "recorded_accuracy": recorded_accuracy(ckpt), "recorded_epoch": recorded(ckpt, "epoch"),
            "notes": notes(ckpt, dataset, args)}


def recorded_accuracy(ckpt):
    value = recorded(ckpt, "accuracy")
    if torch.is_tensor(value) and value.numel() == 1:
        value = value.item()
    return float(value) if isinstance(value, (int, float)) else None


def notes(ckpt, dataset, args):
    """What makes this evaluation differ from the one training ran."""
    run = recorded(ckpt, "opt") or {}
    found = []
    trained_on = recorded(ckpt, "dataset")
    if trained_on is not None and trained_on != dataset.value:
        found.append(f"the checkpoint was trained on {trained_on}")
    if dataset.value == trained_on and run.get("test_subset", 0) != args.test_subset:
        found.append(f"training validated on --test_subset {run.get('test_subset', 0)}, this on {args.test_subset}")
    if run.get("amp", "none") not in ("none", None):
        found.append(f"training validated under --amp {run['amp']}; this runs in float32")
    return found


def report(result):
    """The short human-readable report."""
    lines = [f"file      {result['file']}",
             f"arch      {result['arch']} ({result['arch_source']})",
             f"dataset   {result['dataset']} ({result['dataset_source']}); {result['num_classes']} classes "
             f"({result['classes_source']})",
             f"head      {result['head_description']}",
             f"input     {result['input']}",
             f"images    {result['images']}",
             f"top-1     {result['top1']:.2f}",
             f"top-5     {result['top5']:.2f}",
             f"loss      {result['loss']:.4f}"]
    if result["recorded_accuracy"] is not None:
        lines.append(f"recorded  top-1 {result['recorded_accuracy']:.2f} at epoch {result['recorded_epoch']}")
    lines += [f"note      {note}" for note in result["notes"]]
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_at_least(args, (("batch_size", 1), ("num_classes", 1), ("test_subset", 0), ("num_workers", 0)))
    parse_teacher_input(args.input, "--input")
    result = evaluate(args)
    print(json.dumps(result) if args.json else report(result))
    return result


if __name__ == "__main__":
    run_cli(main)
