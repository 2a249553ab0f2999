"""Training curves of run folders as one PNG (matplotlib, headless): `python -m helper.plot RUN... [--out FILE]`.

Panels: test top-1 per epoch of every run; training loss per epoch of every run; each run's loss terms
(`train_loss_<term>`, log scale when all are positive); for CTKD runs (temp_mean in log.jsonl) the temperature's
mean ± std over the epoch and the gradient-reversal lambda on a twin axis. `plot_runs([folder], folder/curves.png)`
is what a run's `--plot` calls at its end. Damaged log.jsonl lines (not JSON, or a value that is not a finite number)
are skipped, never plotted, with one warning per run; a folder with no usable epoch is skipped with one line, an error
when no run is left.
"""
import logging
import math
import os

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from helper.errors import UserError  # noqa: E402
from helper.runs.files import write_output  # noqa: E402
from helper.runs.records import DamagedFile, no_usable_run, read_log  # noqa: E402

matplotlib.use("Agg")


PANEL_SIZE = (6.4, 3.6)  # inches per panel


log = logging.getLogger("kd")


def read_curves(folder):
    """The usable epoch records of a run folder (damaged lines skipped, said in one warning); one-line errors for a
    folder that does not exist or holds no usable epoch."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder} does not exist" if not os.path.exists(folder) else f"{folder} is not a folder")
    if not os.path.isfile(os.path.join(folder, "log.jsonl")):
        raise UserError(f"{folder} holds no run (no log.jsonl)")
    try:
        records, damaged = read_log(folder)
    except DamagedFile as e:
        raise UserError(f"{folder}: {e}") from None
    if not records:
        raise UserError(f"{folder}: {damaged}; no epoch left to plot" if damaged else
                        f"{folder}: log.jsonl holds no epoch yet")
    if damaged:
        log.warning("%s: %s", folder, damaged)
    return records


def read_runs(folders):
    """(folder, records) of every folder with epochs to plot; the others are skipped with one line each, and a
    UserError when none is left."""
    runs, problems = [], []
    for folder in folders:
        try:
            runs.append((folder, read_curves(folder)))
        except UserError as e:
            problems.append(str(e))
    if not runs:
        raise no_usable_run(problems, "can be plotted")
    for problem in problems:
        log.warning("skipped %s", problem)
    return runs


def short_labels(folders):
    """Legend labels: each folder's name without the '_'-separated parts every name shares (the whole name for one
    run); relative paths when two runs would get the same label."""
    names = [os.path.basename(os.path.normpath(f)) for f in folders]
    if len(names) > 1:
        common = set.intersection(*(set(n.split("_")) for n in names))
        names = ["_".join(p for p in n.split("_") if p not in common) or n for n in names]
    if len(set(names)) < len(names):
        names = [os.path.relpath(f) for f in folders]
    return names


def series(records, key):
    """(epochs, values) of `key` over the records that hold it."""
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def loss_terms(records):
    """The run's `train_loss_<term>` keys, in the order they first appear."""
    terms = []
    for record in records:
        terms += [k for k in record if k.startswith("train_loss_") and k not in terms]
    return terms


def plot_all_runs(ax, runs, key, title, ylabel):
    for label, records in runs:
        ax.plot(*series(records, key), marker=".", label=label)
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def plot_terms(ax, label, records):
    """Each loss term of one run; log scale when every value is positive."""
    values = []
    for key in loss_terms(records):
        epochs, ys = series(records, key)
        ax.plot(epochs, ys, marker=".", label=key[len("train_loss_"):])
        values += ys
    if values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_title(f"loss terms: {label}", fontsize="medium")
    ax.set(xlabel="epoch", ylabel="training loss (epoch mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def plot_temperature(ax, label, records):
    """CTKD: the temperature's mean ± std over the epoch's samples, and lambda on a twin axis."""
    epochs, mean = series(records, "temp_mean")
    std = [r.get("temp_std") or 0.0 for r in records if r.get("temp_mean") is not None]
    ax.plot(epochs, mean, marker=".", color="C0", label="temperature (mean)")
    ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color="C0",
                    alpha=0.25, label="± std")
    ax.set_title(f"CTKD temperature: {label}", fontsize="medium")
    ax.set(xlabel="epoch", ylabel="temperature")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    lam_epochs, lam = series(records, "ctkd_lambda")
    if lam:
        twin = ax.twinx()
        twin.plot(lam_epochs, lam, color="C3", linestyle="--", label="lambda")
        twin.set_ylabel("lambda (gradient reversal)")
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize="small")


def draw_runs(folders):
    """A matplotlib figure of the curves of the run folders `folders` (close it with plt.close)."""
    folders = list(folders)
    if not folders:
        raise UserError("no run folder to plot")
    plotted = read_runs(folders)
    runs = list(zip(short_labels([folder for folder, _ in plotted]), [records for _, records in plotted]))
    panels = [lambda ax: plot_all_runs(ax, runs, "test_acc", "test top-1", "top-1 (%)"),
              lambda ax: plot_all_runs(ax, runs, "train_loss", "training loss", "loss (epoch mean)")]
    for label, records in runs:
        if loss_terms(records):
            panels.append(lambda ax, label=label, records=records: plot_terms(ax, label, records))
        if any(r.get("temp_mean") is not None for r in records):
            panels.append(lambda ax, label=label, records=records: plot_temperature(ax, label, records))
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), squeeze=False)
    for ax, draw in zip(axes.flat, panels):
        draw(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def plot_runs(folders, out_path, flag="--out"):
    """Draw the curves of the run folders `folders` into the PNG `out_path` (`flag` names it in errors); returns
    out_path."""
    fig = draw_runs(folders)
    try:
        return write_output(out_path, flag, lambda path: fig.savefig(path, format="png", dpi=100))
    finally:
        plt.close(fig)


def plot_each_run(folders, logger=None):
    """--plot at the end of a run: <folder>/curves.png for every folder that logged an epoch (one line each)."""
    for folder in folders:
        try:
            path = plot_runs([folder], os.path.join(folder, "curves.png"), "--plot")
        except UserError as e:
            if logger is not None:
                logger.warning("--plot: %s", e)
            continue
        if logger is not None:
            logger.info("curves: %s", path)

