"""Analyse students against their teachers: fidelity, calibration, the class-mean logit difference, CKA and t-SNE.

    python -m helper.analyze RUN_OR_CHECKPOINT... [--teacher T] [--split test|train] [--out DIR] [--checkpoint last]

RUN_OR_CHECKPOINT: a student checkpoint (.pth), a run folder (its <arch>_last.pth, or _best.pth with --checkpoint
best) or a root of runs (every student run under it; its train_teacher.py runs, which have no teacher, only with
--teacher, the teacher's own run left out). Each student's teacher is the file its run recorded
(results.json protocol.teacher.path, else the checkpoint's options' path_t), refused when its sha256 is no longer the
one the student was distilled from; --teacher overrides it for every student (with a warning on a sha256 that
differs). The checkpoint's network, dataset and data root are resolved as helper.evaluate resolves them, the teacher
is loaded as train_student.py loads it (helper.student.teacher.load_teacher: its input adapted where it expects
another), and both see the images without augmentation, in one pass over --split (test: the test set, --test_subset;
train: the training images, --train_subset), plus a logits-only pass over the other split for fidelity.

What is measured (helper/tools/metrics.py states each convention):
- fidelity (Stanton et al. 2021): top-1 agreement (%) and mean KL(p_teacher || p_student) at T = 1 (nats), on the
  test images and on the training images (the student's own: its run's --subset), overall and per class;
- calibration of student and teacher: top-1 (%), ECE (%, --ece_bins equal-width bins, 15 by default), NLL (nats),
  Brier score (sum over classes, mean over images); a reliability diagram;
- the class-mean logit difference (the papers' "correlation difference", CRD Fig. 3 / DKD; mdistiller's
  correlation.ipynb): |class-mean student logits - class-mean teacher logits| / 3.0, diagonal zeroed, its mean and
  max; a heat-map with the fixed colour scale 0-1;
- linear CKA (Kornblith et al. 2019, minibatch unbiased HSIC of Nguyen et al. 2021) between every teacher feature map
  and every student one: feats[:-1] of model(x, is_feat=True), the stem and each stage (mdistiller's
  get_stage_channels list); cka_last pairs the last stage of each;
- t-SNE (scikit-learn, --seed) of the pooled features (feats[-1]) of both networks on --tsne_classes classes.

Files, in the run folder (or --out DIR; DIR/<run folder name>/ when several students are analysed): analysis.json,
analysis_per_class.csv, analysis_reliability.png, analysis_logit_diff.png, analysis_cka.png, analysis_tsne.png
(prefix analysis_train for --split train), each written atomically.
"""
import argparse
import csv
import glob
import io
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import torch  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from dataset import build_loaders  # noqa: E402
from helper.errors import UserError  # noqa: E402
from helper.options import run_cli  # noqa: E402
from helper.runs.files import (  # noqa: E402
    copy_atomic,
    extract_state_dict,
    file_sha256,
    load_checkpoint,
    load_weights,
    write_output,
    write_text_atomic,
)
from helper.runs.records import OPTIONS_FIELDS, DamagedFile, read_json, read_results  # noqa: E402
from helper.student.teacher import adapted, dataset_input, expected_input, load_teacher  # noqa: E402
from helper.tools import metrics  # noqa: E402
from helper.tools.evaluate import (  # noqa: E402
    check_classes_fit,
    check_input_size_fits,
    check_recorded_fields,
    data_options,
    evaluation_network,
    plain_options,
    recorded,
    resolve_arch,
    resolve_classes,
    resolve_dataset,
)
from helper.tools.table import find_run_folders, read_run  # noqa: E402
from helper.util import check_at_least, is_integer, resolve_device  # noqa: E402
from models import build_model  # noqa: E402

log = logging.getLogger("kd")
SPLITS = ("test", "train")
FILES = {"reliability": "reliability.png", "logit_diff": "logit_diff.png", "cka": "cka.png", "tsne": "tsne.png",
         "per_class": "per_class.csv"}
LOGIT_DIFF_COLOURS = "PuBuGn"  # mdistiller's correlation.ipynb (seaborn.heatmap(diff, vmin=0, vmax=1.0, cmap=...))


def build_parser():
    p = argparse.ArgumentParser(prog="python -m helper.analyze",
                                description="Fidelity, calibration, class-mean logit difference, CKA and t-SNE of "
                                            "students against their teachers (no training).")
    p.add_argument("paths", nargs="+", metavar="RUN_OR_CHECKPOINT",
                   help="student checkpoints (.pth), run folders or roots of runs (every student run under them; with "
                        "--teacher, every train_teacher.py run too but the teacher's own)")
    p.add_argument("--teacher", type=str, default=None,
                   help="teacher checkpoint for every student, instead of the one each run recorded (needed for a "
                        "run without one, e.g. a train_teacher.py run of the student's network)")
    p.add_argument("--model_t", type=str, default=None,
                   help="the --teacher's network when its file does not record one (e.g. torchvision:resnet18)")
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="which checkpoint of a run folder: <arch>_last.pth (the end of training) or <arch>_best.pth "
                        "(last)")
    p.add_argument("--split", choices=SPLITS, default="test",
                   help="the images of the main pass (calibration, heat-map, CKA, t-SNE, per-class accuracy): test "
                        "(--test_subset of the test set) or train (the training images, no augmentation); fidelity "
                        "is measured on both (test)")
    p.add_argument("--out", type=str, default=None, metavar="DIR",
                   help="write the files here instead of the run folder (DIR/<run folder name>/ for each of several "
                        "students)")
    p.add_argument("--ece_bins", type=int, default=15, help="equal-width confidence bins of ECE and the reliability "
                                                            "diagram (15; 10 is the other common choice)")
    p.add_argument("--tsne_classes", type=str, default="10",
                   help="classes in the t-SNE plot: N (the first N classes) or a comma list of class indices (10)")
    p.add_argument("--tsne_samples", type=int, default=2000,
                   help="at most this many images in the t-SNE plot, shared equally by its classes (2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of t-SNE (0)")
    p.add_argument("--test_subset", type=int, default=0,
                   help="N class-balanced test images only (0 = the whole test set)")
    p.add_argument("--train_subset", type=int, default=None,
                   help="N class-balanced training images (default: those the student was trained on, its run's "
                        "--subset; 0 = every training image)")
    p.add_argument("--data_root", type=str, default=None,
                   help="folder holding the datasets (default: the checkpoint's run options, else ./data)")
    p.add_argument("--device", type=str, default="auto", help="cpu, cuda, cuda:N or auto (auto)")
    p.add_argument("--batch_size", type=int, default=None,
                   help="images per batch, also CKA's minibatch (64; 256 for imagenet)")
    p.add_argument("--num_workers", type=int, default=8, help="data loader worker processes (8)")
    return p


def check_args(args):
    check_at_least(args, (("ece_bins", 1), ("tsne_samples", 1), ("test_subset", 0), ("train_subset", 0),
                          ("batch_size", 1), ("num_workers", 0)))


def tsne_classes(text, num_classes):
    """The class indices of --tsne_classes ('10': classes 0-9; '3,7,9': those) for a dataset of num_classes."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--tsne_classes {text!r}: give a number of classes or a comma list of class indices") \
            from None
    if len(values) == 1:
        if values[0] < 1:
            raise UserError(f"--tsne_classes {text}: at least one class")
        return list(range(min(values[0], num_classes)))
    wrong = [v for v in values if not 0 <= v < num_classes]
    if wrong or len(set(values)) < len(values):
        raise UserError(f"--tsne_classes {text}: class indices must be distinct, in 0..{num_classes - 1}")
    return values


# ---- which checkpoints ----------------------------------------------------------------------------------------------
def run_checkpoint(folder, kind):
    """<folder>/<arch>_<kind>.pth of a run folder: the network its options.json names (model_s, else model), else
    the only *_<kind>.pth there."""
    try:
        options = read_json(os.path.join(folder, "options.json"), OPTIONS_FIELDS) or {}
    except DamagedFile as e:
        raise UserError(f"{folder}: {e}") from None
    arch = options.get("model_s") or options.get("model")
    if arch:
        path = os.path.join(folder, f"{arch}_{kind}.pth")
    else:
        found = sorted(glob.glob(os.path.join(glob.escape(folder), f"*_{kind}.pth")))
        path = found[0] if len(found) == 1 else None
    if path is None or not os.path.isfile(path):
        raise UserError(f"{folder} holds no {os.path.basename(path) if path else f'*_{kind}.pth'} (the run has not "
                        f"saved it yet){'; try --checkpoint best' if kind == 'last' else ''}")
    return path


def student_checkpoints(paths, kind, teacher=None):
    """The checkpoints to analyse: files as given; a run folder's checkpoint (whatever ran in it); under a root,
    every student run's, and with --teacher every train_teacher.py run's too but the teacher's own."""
    found = []
    own = os.path.dirname(os.path.abspath(teacher)) if teacher else None
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
            continue
        if not os.path.exists(path):
            raise UserError(f"{path} does not exist")
        folders = find_run_folders([path])
        if folders == [path]:
            found.append(run_checkpoint(path, kind))
            continue
        chosen = [f for f in folders if (teacher and os.path.abspath(f) != own) or read_run(f).is_student]
        if not chosen:
            raise UserError(f"{path} holds no student run (only runs of train_teacher.py, which have no teacher); "
                            "pass --teacher T to compare them with a teacher")
        found += [run_checkpoint(f, kind) for f in chosen]
    return found


# ---- the teacher -----------------------------------------------------------------------------------------------------
def recorded_teacher(path, ckpt):
    """(path, sha256) of the teacher the student's run recorded: results.json protocol.teacher beside the checkpoint,
    else the checkpoint's options' path_t and its teacher_sha256; None where not recorded."""
    try:
        results = read_results(os.path.dirname(os.path.abspath(path))) or {}
    except DamagedFile:
        results = {}
    protocol_teacher = (results.get("protocol") or {}).get("teacher") or {}
    teacher_path = protocol_teacher.get("path") or (recorded(ckpt, "opt") or {}).get("path_t")
    sha256 = recorded(ckpt, "teacher_sha256") or protocol_teacher.get("sha256")
    return teacher_path, sha256


def resolve_teacher(path, ckpt, flag):
    """(teacher file, its sha256, how it was chosen): --teacher, else the run's; the run's must still be the file the
    student was distilled from (sha256); --teacher over a recorded sha256 that differs is a warning."""
    teacher_path, recorded_sha = recorded_teacher(path, ckpt)
    if flag is not None:
        if not os.path.isfile(flag):
            raise UserError(f"--teacher {flag} does not exist" if not os.path.exists(flag) else
                            f"--teacher {flag} is not a file; give the teacher's checkpoint (.pth)")
        sha256 = file_sha256(flag)
        if recorded_sha and sha256 != recorded_sha:
            log.warning("--teacher %s (sha256 %s...) is not the teacher %s was distilled from (sha256 %s...)", flag,
                        sha256[:12], path, recorded_sha[:12])
        return flag, sha256, "--teacher"
    if not teacher_path:
        raise UserError(f"{path} records no teacher (a train_teacher.py run?); pass --teacher T to compare it with one")
    if not os.path.isfile(teacher_path):
        raise UserError(f"{path}: its teacher {teacher_path} (recorded by its run) does not exist here; pass --teacher")
    sha256 = file_sha256(teacher_path)
    if recorded_sha and sha256 != recorded_sha:
        raise UserError(f"{path}: its teacher {teacher_path} has changed since the run (sha256 {sha256[:12]}..., "
                        f"recorded {recorded_sha[:12]}...); pass --teacher {teacher_path} to analyse against it anyway")
    return teacher_path, sha256, "the student's run"


def check_teacher_fits(teacher_path, source, dataset, num_classes):
    """A teacher that records another dataset or class count (num_classes; None: not known yet) than the student's
    is a one-line error naming it."""
    ckpt = load_checkpoint(teacher_path)
    label = f"--teacher {teacher_path}" if source == "--teacher" else f"the teacher {teacher_path}"
    trained_on = recorded(ckpt, "dataset")
    if isinstance(trained_on, str) and trained_on != dataset:
        raise UserError(f"{label} was trained on {trained_on}, the student on {dataset}; pass a {dataset} teacher "
                        "with --teacher")
    classes = recorded(ckpt, "num_classes")
    if is_integer(classes) and num_classes is not None and classes != num_classes:
        raise UserError(f"{label} classifies {classes} classes, the student {num_classes}; pass a teacher of the "
                        "student's dataset with --teacher")


# ---- the data -------------------------------------------------------------------------------------------------------
def plain_train_loader(data, opt):
    """The training images of `data` (a torch-loader DataBundle) in order, preprocessed as its test images are."""
    train_set = data.train_loader.dataset
    train_set.transform = data.val_loader.dataset.transform  # the test-time preprocessing: no augmentation
    return DataLoader(train_set, batch_size=opt.batch_size, shuffle=False, num_workers=opt.num_workers,
                      pin_memory=torch.device(opt.device).type == "cuda")


def loaders(args, ckpt, dataset, device):
    """(DataBundle, {split: loader without augmentation}); torch DataLoaders over the datasets of this repository."""
    run = recorded(ckpt, "opt") or {}
    train_subset = args.train_subset if args.train_subset is not None else run.get("subset", 0)
    opt = data_options(args, ckpt, dataset, device, train_subset)
    opt.loader, opt.gpu_loader = "torch", False
    data = build_loaders(opt)
    return data, {"test": data.val_loader, "train": plain_train_loader(data, opt)}


# ---- the pass -------------------------------------------------------------------------------------------------------
class Outputs:
    """Logits [N, K] of student and teacher, labels [N] (CPU), and the kept pooled features for t-SNE."""

    def __init__(self):
        self.logit_s, self.logit_t, self.labels, self.pooled_s, self.pooled_t, self.pooled_labels = ([] for _ in
                                                                                                     range(6))

    def finish(self):
        for name in ("logit_s", "logit_t", "labels"):
            setattr(self, name, torch.cat(getattr(self, name)))
        for name in ("pooled_s", "pooled_t", "pooled_labels"):
            items = getattr(self, name)
            setattr(self, name, torch.cat(items) if items else None)
        return self


class TsneSelection:
    """Keeps the first `quota` images of each chosen class, in loader order."""

    def __init__(self, classes, samples, num_classes):
        self.chosen = torch.zeros(num_classes, dtype=torch.bool)
        self.chosen[classes] = True
        self.quota = max(1, samples // len(classes))
        self.kept = torch.zeros(num_classes, dtype=torch.int64)

    def take(self, labels):
        """[B] bool mask of the images of this batch to keep."""
        keep = torch.zeros(len(labels), dtype=torch.bool)
        for i, label in enumerate(labels.tolist()):
            if self.chosen[label] and self.kept[label] < self.quota:
                keep[i] = True
                self.kept[label] += 1
        return keep


@torch.no_grad()
def run_pass(loader, student, head, teacher, device, cka=None, selection=None):
    """One pass: logits of the student (through its evaluation head `head`) and the teacher; with `cka`, every
    teacher x student feature map pair; with `selection`, the pooled features it keeps."""
    out = Outputs()
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        if cka is None:
            logit_s, logit_t = head(images), teacher(images)
        else:
            feat_s, logit_s = student(images, is_feat=True)
            feat_t, logit_t = teacher(images, is_feat=True)
            if head is not student:
                logit_s = head(images)
            cka.update(feat_t[:-1], feat_s[:-1])
            keep = selection.take(labels)
            if keep.any():
                out.pooled_s.append(feat_s[-1][keep.to(device)].flatten(1).float().cpu())
                out.pooled_t.append(feat_t[-1][keep.to(device)].flatten(1).float().cpu())
                out.pooled_labels.append(labels[keep])
        out.logit_s.append(logit_s.float().cpu())
        out.logit_t.append(logit_t.float().cpu())
        out.labels.append(labels.cpu())
    return out.finish()


@torch.no_grad()
def stage_shapes(network, size, device):
    """Shapes (without the batch) of feats[:-1] of a network on one image of side `size`."""
    feats, _ = network(torch.zeros(2, 3, size, size, device=device), is_feat=True)
    return [list(f.shape[1:]) for f in feats[:-1]]


# ---- numbers ---------------------------------------------------------------------------------------------------------
def calibration(logits, labels, bins):
    probs = torch.softmax(logits.double(), dim=1)
    return {"top1": metrics.top1(logits, labels), "ece": metrics.ece(probs, labels, bins),
            "nll": metrics.nll(probs, labels), "brier": metrics.brier(probs, labels)}


def per_class_rows(main, fidelity, split, num_classes):
    """Per-class rows: images, agreement and KL on both splits; student and teacher top-1 on --split."""
    columns = {}
    for name, out in fidelity.items():
        suffix = "" if name == "test" else "_train"
        columns[f"{name}_images"] = torch.bincount(out.labels, minlength=num_classes).tolist()
        columns[f"agreement{suffix}"] = (100 * metrics.per_class_mean(
            metrics.top1_matches(out.logit_t, out.logit_s).double(), out.labels, num_classes)).tolist()
        columns[f"kl{suffix}"] = metrics.per_class_mean(
            metrics.kl_per_sample(out.logit_t, out.logit_s), out.labels, num_classes).tolist()
    for who, logits in (("student", main.logit_s), ("teacher", main.logit_t)):
        correct = (logits.argmax(dim=1) == main.labels).double()
        columns[f"{who}_top1_{split}"] = (100 * metrics.per_class_mean(correct, main.labels, num_classes)).tolist()
    header = ["class"] + list(columns)
    rows = [[c] + [columns[key][c] for key in header[1:]] for c in range(num_classes)]
    return header, rows


def csv_value(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def finite(value):
    """JSON has no NaN: a float that is not finite becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [finite(v) for v in value]
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    return value


# ---- figures ---------------------------------------------------------------------------------------------------------
def save_png(fig, path):
    """Write `fig` to the PNG `path` atomically (rendered into a temporary folder, then copied into place by
    helper.runs.files.copy_atomic) and close it."""
    try:
        with tempfile.TemporaryDirectory() as folder:
            rendered = os.path.join(folder, "figure.png")
            fig.savefig(rendered, format="png", dpi=100)
            write_output(path, "--out", lambda out: copy_atomic(rendered, out))
    finally:
        plt.close(fig)
    return path


def draw_reliability(panels, bins):
    """Reliability diagrams side by side: per model, accuracy vs confidence per bin with the diagonal, and the
    bin counts below. `panels`: [(title, logits [N, K], labels [N])]."""
    fig, axes = plt.subplots(2, len(panels), figsize=(5 * len(panels), 6), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex="col")
    width = 100.0 / bins
    centres = [(b + 0.5) * width for b in range(bins)]
    for column, (title, logits, labels) in enumerate(panels):
        probs = torch.softmax(logits.double(), dim=1)
        counts, accuracy, confidence = metrics.calibration_bins(probs, labels, bins)
        top, bottom = axes[0, column], axes[1, column]
        top.bar(centres, (100 * accuracy.nan_to_num(0.0)).tolist(), width=width, edgecolor="black", linewidth=0.5,
                label="accuracy")
        top.plot(centres, (100 * confidence).tolist(), "o", color="C3", markersize=3, label="mean confidence")
        top.plot([0, 100], [0, 100], "--", color="gray", label="perfect calibration")
        top.set(xlim=(0, 100), ylim=(0, 100), ylabel="accuracy in the bin (%)",
                title=f"{title}\nECE {metrics.ece(probs, labels, bins):.2f} % ({bins} equal-width bins)")
        top.legend(fontsize="small", loc="upper left")
        top.grid(alpha=0.3)
        bottom.bar(centres, counts.tolist(), width=width, color="gray", edgecolor="black", linewidth=0.5)
        bottom.set(xlabel="confidence: max probability (%)", ylabel="images")
        bottom.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def draw_logit_difference(diff, mean, top, title):
    """The class-mean logit difference [K, K] on the fixed scale 0-1 (mdistiller's notebook: vmin 0, vmax 1)."""
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    image = ax.imshow(diff.numpy(), vmin=0.0, vmax=1.0, cmap=LOGIT_DIFF_COLOURS, interpolation="nearest")
    fig.colorbar(image, ax=ax, label=f"|student - teacher| / {metrics.LOGIT_DIFF_SCALE:g}")
    ax.set(xlabel="logit of class", ylabel="images of class",
           title=f"{title}\nclass-mean logit difference: mean {mean:.4f}, max {top:.4f}")
    fig.tight_layout()
    return fig


def draw_cka(cka, teacher_shapes, student_shapes, title):
    """Teacher stage x student stage linear CKA on the fixed scale 0-1, each cell annotated."""
    rows, cols = cka.shape
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * cols, 1.4 + 0.8 * rows))
    image = ax.imshow(cka.numpy(), vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(rows):
        for j in range(cols):
            value = cka[i, j].item()
            ax.text(j, i, "nan" if math.isnan(value) else f"{value:.2f}", ha="center", va="center",
                    color="white" if not value > 0.6 else "black", fontsize="small")
    ax.set_xticks(range(cols), [f"{j}\n{'x'.join(map(str, s))}" for j, s in enumerate(student_shapes)],
                  fontsize="x-small")
    ax.set_yticks(range(rows), [f"{i}: {'x'.join(map(str, s))}" for i, s in enumerate(teacher_shapes)],
                  fontsize="x-small")
    ax.set(xlabel="student feature map (feats[:-1])", ylabel="teacher feature map (feats[:-1])",
           title=f"{title}\nlinear CKA (minibatch unbiased HSIC)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def tsne_points(features, seed):
    """2-D t-SNE embedding (scikit-learn, PCA initialisation, random_state=seed) of features [n, d]."""
    n = features.shape[0]
    perplexity = min(30.0, max(1.0, (n - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        features.double().numpy())


def draw_tsne(panels, labels, classes, seed):
    """t-SNE of pooled features side by side; `panels`: [(title, features [n, d])], coloured by class."""
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.4), squeeze=False)
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo")
    for ax, (title, features) in zip(axes[0], panels):
        points = tsne_points(features, seed)
        for rank, c in enumerate(classes):
            mask = (labels == c).numpy()
            colour = colours(rank) if len(classes) <= 20 else colours(rank / max(1, len(classes) - 1))
            ax.scatter(points[mask, 0], points[mask, 1], s=6, color=colour, label=str(c))
        ax.set(title=title, xticks=[], yticks=[])
    if len(classes) <= 20:
        axes[0, -1].legend(title="class", fontsize="x-small", markerscale=2, loc="center left",
                           bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"t-SNE of the pooled features (feats[-1]), {len(labels)} images of {len(classes)} classes, "
                 f"seed {seed}", fontsize="medium")
    fig.tight_layout()
    return fig


# ---- one student -----------------------------------------------------------------------------------------------------
def student_network(path, ckpt, data, dataset, device):
    """(the student network, the network training validated: its evaluation head where recorded, else itself)."""
    state_dict = extract_state_dict(ckpt)
    arch = resolve_arch(ckpt, path, None)
    classes = resolve_classes(ckpt, state_dict, arch.value, None, path)
    trained_on = f" ({recorded(ckpt, 'dataset')})" if recorded(ckpt, "dataset") else ""
    check_classes_fit(path, classes, data, dataset, trained_on)
    network = build_model(arch.value, classes.value)
    load_weights(network, state_dict, path, arch.value)
    data_input = dataset_input(dataset.value, data.input_size)
    seen, _ = expected_input(ckpt, arch.value, path, data_input, "auto", flag="--input")
    check_input_size_fits(path, arch, seen, data, dataset, trained_on)
    student = adapted(network.to(device).eval(), data_input, seen).to(device)
    head, _ = evaluation_network(ckpt, student, data, device, path, no_head=False)
    return arch.value, student, head.eval()


@dataclass
class Pair:
    """A student and its teacher, ready to run on the same batches."""
    path: str  # the student's checkpoint
    arch: str
    student: torch.nn.Module  # the network (features: model(x, is_feat=True))
    head: torch.nn.Module  # what training validated: the student, or its evaluation head (SimKD)
    teacher: torch.nn.Module
    teacher_arch: str
    teacher_path: str
    teacher_sha256: str
    teacher_source: str
    dataset: str
    data: object  # DataBundle
    loaders: dict  # {split: loader without augmentation}


def prepare(path, args):
    """The Pair of one student checkpoint: its network as helper.evaluate builds it, its teacher as
    train_student.py loads it, the data without augmentation; one-line errors for what does not fit."""
    ckpt = plain_options(load_checkpoint(path))
    check_recorded_fields(ckpt, path)
    try:
        extract_state_dict(ckpt)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    dataset = resolve_dataset(ckpt, None, path)
    teacher_path, teacher_sha256, teacher_source = resolve_teacher(path, ckpt, args.teacher)
    check_teacher_fits(teacher_path, teacher_source, dataset.value, recorded(ckpt, "num_classes"))
    device = resolve_device(args.device)
    data, split_loaders = loaders(args, ckpt, dataset.value, device)
    arch, student, head = student_network(path, ckpt, data, dataset, device)
    if recorded(ckpt, "num_classes") is None:  # checked against the dataset's class count now
        check_teacher_fits(teacher_path, teacher_source, dataset.value, data.num_classes)
    from_run = teacher_source != "--teacher"
    model_t = recorded(ckpt, "teacher_arch") if from_run else args.model_t
    setting = (recorded(ckpt, "opt") or {}).get("teacher_input", "auto") if from_run else "auto"
    teacher, teacher_arch = load_teacher(teacher_path, data.num_classes, device, model_t=model_t,
                                         data_input=dataset_input(dataset.value, data.input_size), setting=setting)
    return Pair(path, arch, student, head, teacher, teacher_arch, teacher_path, teacher_sha256, teacher_source,
                dataset.value, data, split_loaders)


def measure(pair, args):
    """(the main pass over --split with CKA and t-SNE features, {split: pass} of both splits, the MinibatchCKA,
    teacher stage shapes, student stage shapes)."""
    device = next(pair.student.parameters()).device
    classes = tsne_classes(args.tsne_classes, pair.data.num_classes)
    shapes_t = stage_shapes(pair.teacher, pair.data.input_size, device)
    shapes_s = stage_shapes(pair.student, pair.data.input_size, device)
    cka = metrics.MinibatchCKA(len(shapes_t), len(shapes_s))
    selection = TsneSelection(classes, args.tsne_samples, pair.data.num_classes)
    log.info("%s: %s against the teacher %s (from %s), %s split", pair.path, pair.arch, pair.teacher_path,
             pair.teacher_source, args.split)
    main = run_pass(pair.loaders[args.split], pair.student, pair.head, pair.teacher, device, cka, selection)
    other = "train" if args.split == "test" else "test"
    fidelity = {args.split: main, other: run_pass(pair.loaders[other], pair.student, pair.head, pair.teacher, device)}
    for split, out in fidelity.items():
        if len(out.labels) == 0:
            raise UserError(f"{pair.path}: no {split} images to analyse")
    if main.pooled_labels is None or len(main.pooled_labels) < 2:
        raise UserError(f"{pair.path}: fewer than two images of --tsne_classes {args.tsne_classes} in the "
                        f"{args.split} split for t-SNE; choose classes it holds")
    return main, fidelity, cka, shapes_t, shapes_s, classes


def analyse(path, args, out_folder):
    """Analyse one student checkpoint -> the analysis.json dict; writes its files into out_folder."""
    pair = prepare(path, args)
    main, fidelity, cka, shapes_t, shapes_s, classes = measure(pair, args)
    prefix = "analysis" if args.split == "test" else "analysis_train"
    files = {key: f"{prefix}_{name}" for key, name in FILES.items()}
    diff = metrics.class_mean_logit_difference(main.logit_t, main.logit_s, main.labels, pair.data.num_classes)
    diff_mean, diff_max = metrics.difference_summary(diff)
    cka_values = cka.compute()
    test, train = fidelity["test"], fidelity["train"]
    result = {
        "checkpoint": path, "checkpoint_sha256": file_sha256(path), "arch": pair.arch, "dataset": pair.dataset,
        "teacher_checkpoint": pair.teacher_path, "teacher_sha256": pair.teacher_sha256,
        "teacher_arch": pair.teacher_arch, "teacher_source": pair.teacher_source,
        "split": args.split, "images": len(main.labels), "test_images": len(test.labels),
        "train_images": len(train.labels), "ece_bins": args.ece_bins,
        "student": calibration(main.logit_s, main.labels, args.ece_bins),
        "teacher": calibration(main.logit_t, main.labels, args.ece_bins),
        "agreement": metrics.agreement(test.logit_t, test.logit_s), "kl": metrics.mean_kl(test.logit_t, test.logit_s),
        "agreement_train": metrics.agreement(train.logit_t, train.logit_s),
        "kl_train": metrics.mean_kl(train.logit_t, train.logit_s),
        "logit_diff_mean": diff_mean, "logit_diff_max": diff_max, "logit_diff_scale": metrics.LOGIT_DIFF_SCALE,
        "cka": cka_values.tolist(), "cka_last": cka_values[-1, -1].item(),
        "cka_stages": {"features": "feats[:-1]: the stem and each stage", "teacher": shapes_t, "student": shapes_s,
                       "minibatch": pair.loaders[args.split].batch_size, "minibatches": cka.batches,
                       "skipped": cka.skipped},
        "tsne_classes": classes, "tsne_images": len(main.pooled_labels), "seed": args.seed, "files": files,
    }
    title = f"{pair.arch} (student) vs {pair.teacher_arch} (teacher), {pair.dataset} {args.split}"
    write_files(out_folder, result, main, fidelity, diff, cka_values, title, args)
    return result


def write_files(folder, result, main, fidelity, diff, cka_values, title, args):
    """The PNGs, the per-class CSV, then analysis.json (last: its presence says the others are there)."""
    path = lambda key: os.path.join(folder, result["files"][key])  # noqa: E731
    names = (f"{result['arch']} (student)", f"{result['teacher_arch']} (teacher)")
    save_png(draw_reliability([(names[0], main.logit_s, main.labels), (names[1], main.logit_t, main.labels)],
                              args.ece_bins), path("reliability"))
    save_png(draw_logit_difference(diff, result["logit_diff_mean"], result["logit_diff_max"], title),
             path("logit_diff"))
    save_png(draw_cka(cka_values, result["cka_stages"]["teacher"], result["cka_stages"]["student"], title),
             path("cka"))
    save_png(draw_tsne([(names[0], main.pooled_s), (names[1], main.pooled_t)], main.pooled_labels,
                       result["tsne_classes"], args.seed), path("tsne"))
    header, rows = per_class_rows(main, fidelity, args.split, diff.shape[0])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[csv_value(v) for v in row] for row in rows])
    write_output(path("per_class"), "--out", lambda out: write_text_atomic(out, text.getvalue()))
    json_name = "analysis.json" if args.split == "test" else "analysis_train.json"
    write_output(os.path.join(folder, json_name), "--out",
                 lambda out: write_text_atomic(out, json.dumps(finite(result), indent=1, allow_nan=False) + "\n"))


def out_folders(checkpoints, out):
    """Where each checkpoint's files go: its run folder; --out DIR for one, DIR/<run folder name>/ for several."""
    runs = [os.path.dirname(os.path.abspath(c)) for c in checkpoints]
    if out is None:
        return runs
    if len(checkpoints) == 1:
        return [out]
    return [os.path.join(out, os.path.basename(run)) for run in runs]


def report(result, folder):
    s, t = result["student"], result["teacher"]
    return "\n".join([
        f"checkpoint  {result['checkpoint']} ({result['arch']}); teacher {result['teacher_checkpoint']} "
        f"({result['teacher_arch']}, from {result['teacher_source']})",
        f"images      {result['images']} ({result['split']}); fidelity on {result['test_images']} test and "
        f"{result['train_images']} training images",
        f"agreement   {result['agreement']:.2f} % test, {result['agreement_train']:.2f} % train; KL(t||s) "
        f"{result['kl']:.4f} test, {result['kl_train']:.4f} train",
        f"student     top-1 {s['top1']:.2f}  ECE {s['ece']:.2f} % ({result['ece_bins']} bins)  NLL {s['nll']:.4f}  "
        f"Brier {s['brier']:.4f}",
        f"teacher     top-1 {t['top1']:.2f}  ECE {t['ece']:.2f} % ({result['ece_bins']} bins)  NLL {t['nll']:.4f}  "
        f"Brier {t['brier']:.4f}",
        f"logit diff  mean {result['logit_diff_mean']:.4f}, max {result['logit_diff_max']:.4f} (class-mean, / 3)",
        f"CKA         last stages {result['cka_last']:.4f}",
        f"files       {folder}/{'analysis.json' if result['split'] == 'test' else 'analysis_train.json'} and "
        f"{', '.join(result['files'].values())}"])


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    checkpoints = student_checkpoints(args.paths, args.checkpoint, args.teacher)
    results = []
    for checkpoint, folder in zip(checkpoints, out_folders(checkpoints, args.out)):
        result = analyse(checkpoint, args, folder)
        print(report(result, folder), flush=True)
        results.append(result)
    return results


if __name__ == "__main__":
    run_cli(main)
