"""Training curves as one PNG (matplotlib, headless): per protocol, the mean over its runs (seeds) with a ± sample
std band; `python -m helper.plot FOLDER... [--out FILE]` groups the runs of folders by protocol (helper.tools.plot).

Panels: test top-1 per epoch of every protocol; training loss per epoch of every protocol; each protocol's loss terms
(`train_loss_<term>`, mean over its runs, log scale when all are positive); for CTKD (temp_mean in log.jsonl) the
temperature's mean and within-epoch std, averaged over the runs, and the gradient-reversal lambda on a twin axis. At
each epoch the mean and std are over the runs that logged it (std from two runs on; one run: its own curve).
`plot_runs([folder], folder/curves.png)` is what a run's `--plot` calls at its end: one protocol per folder, labelled
by its name. Damaged log.jsonl lines (not JSON, or a value that is not a finite number) are skipped, never plotted,
with one warning per run; a folder with no usable epoch is skipped with one line, an error when no run is left.
"""
import logging
import math
import os
import statistics
import textwrap
from typing import List, NamedTuple, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from helper.errors import UserError  # noqa: E402
from helper.runs.files import write_output  # noqa: E402
from helper.runs.records import DamagedFile, no_usable_run, read_log  # noqa: E402


PANEL_SIZE = (6.4, 3.6)  # inches per panel
TITLE_WIDTH = 150  # characters per line of the figure's title (two panels wide)


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


class Protocol(NamedTuple):
    """What one legend entry draws: its label and its runs as (folder, epoch records)."""
    label: str
    runs: List[Tuple[str, List[dict]]]


def series(records, key):
    """(epochs, values) of `key` over the records that hold it."""
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def mean_curve(records_of_runs, key):
    """(epochs, means, stds) of `key` over runs: at each epoch, over the runs that logged it; std is the sample std
    (n-1), None where fewer than two runs did."""
    by_epoch = {}
    for records in records_of_runs:
        for epoch, value in zip(*series(records, key)):
            by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    means = [statistics.fmean(by_epoch[e]) for e in epochs]
    stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else None for e in epochs]
    return epochs, means, stds


def draw_mean(ax, epochs, means, stds, **style):
    """The mean line and, where there is a std, its ± band."""
    (line,) = ax.plot(epochs, means, marker=".", **style)
    if any(s is not None for s in stds):
        spread = [s or 0.0 for s in stds]
        ax.fill_between(epochs, [m - s for m, s in zip(means, spread)], [m + s for m, s in zip(means, spread)],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def records_of(protocol):
    return [records for _, records in protocol.runs]


def loss_terms(records_of_runs):
    """The runs' `train_loss_<term>` keys, in the order they first appear."""
    terms = []
    for records in records_of_runs:
        for record in records:
            terms += [k for k in record if k.startswith("train_loss_") and k not in terms]
    return terms


def plot_all(ax, protocols, key, title, ylabel):
    for protocol in protocols:
        draw_mean(ax, *mean_curve(records_of(protocol), key), label=protocol.label)
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def plot_terms(ax, protocol):
    """Each loss term of one protocol (mean over its runs); log scale when every value is positive."""
    values = []
    for key in loss_terms(records_of(protocol)):
        epochs, means, stds = mean_curve(records_of(protocol), key)
        draw_mean(ax, epochs, means, stds, label=key[len("train_loss_"):])
        values += means
    if values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_title(f"loss terms: {protocol.label}", fontsize="medium")
    ax.set(xlabel="epoch", ylabel="training loss (epoch mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def plot_temperature(ax, protocol):
    """CTKD: the temperature's mean ± its std over the epoch's samples (both averaged over the runs), and lambda
    on a twin axis."""
    runs = records_of(protocol)
    epochs, mean, _ = mean_curve(runs, "temp_mean")
    std = dict(zip(*mean_curve(runs, "temp_std")[:2]))
    spread = [std.get(e, 0.0) for e in epochs]
    ax.plot(epochs, mean, marker=".", color="C0", label="temperature (mean)")
    ax.fill_between(epochs, [m - s for m, s in zip(mean, spread)], [m + s for m, s in zip(mean, spread)], color="C0",
                    alpha=0.25, label="± std")
    ax.set_title(f"CTKD temperature: {protocol.label}", fontsize="medium")
    ax.set(xlabel="epoch", ylabel="temperature")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    lam_epochs, lam, _ = mean_curve(runs, "ctkd_lambda")
    if lam:
        twin = ax.twinx()
        twin.plot(lam_epochs, lam, color="C3", linestyle="--", label="lambda")
        twin.set_ylabel("lambda (gradient reversal)")
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize="small")


def draw_protocols(protocols, title=""):
    """A matplotlib figure of the curves of `protocols` (close it with plt.close); `title` above the panels."""
    if not protocols:
        raise UserError("no run folder to plot")
    panels = [lambda ax: plot_all(ax, protocols, "test_acc", "test top-1", "top-1 (%)"),
              lambda ax: plot_all(ax, protocols, "train_loss", "training loss", "loss (epoch mean)")]
    for protocol in protocols:
        if loss_terms(records_of(protocol)):
            panels.append(lambda ax, protocol=protocol: plot_terms(ax, protocol))
        if any(r.get("temp_mean") is not None for records in records_of(protocol) for r in records):
            panels.append(lambda ax, protocol=protocol: plot_temperature(ax, protocol))
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), squeeze=False)
    for ax, draw in zip(axes.flat, panels):
        draw(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(textwrap.fill(title, TITLE_WIDTH), fontsize="medium")
    fig.tight_layout()
    return fig


def draw_runs(folders):
    """A figure of the run folders `folders`, one curve each, labelled by their names (short_labels)."""
    folders = list(folders)
    if not folders:
        raise UserError("no run folder to plot")
    plotted = read_runs(folders)
    labels = short_labels([folder for folder, _ in plotted])
    return draw_protocols([Protocol(label, [run]) for label, run in zip(labels, plotted)])


def save_figure(fig, out_path, flag="--out"):
    """Write `fig` to the PNG `out_path` (`flag` names it in errors) and close it; returns out_path."""
    try:
        return write_output(out_path, flag, lambda path: fig.savefig(path, format="png", dpi=100))
    finally:
        plt.close(fig)


def plot_runs(folders, out_path, flag="--out"):
    """Draw the curves of the run folders `folders` into the PNG `out_path` (`flag` names it in errors); returns
    out_path."""
    return save_figure(draw_runs(folders), out_path, flag)


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

