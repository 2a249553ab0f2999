"""Tables of results from run folders, ready for a paper:
`python -m helper.table FOLDER... [--select last|best|median] [--format md|csv|latex] [--out PATH] [--csv PATH]
[--columns kd,crd,...] [--with_baselines] [--paper]`.

Folders. Every run folder in or under the FOLDERs is read (a FOLDER may be a root such as save/student_model, a run
folder, or a helper.launch folder: its jobs' run folders); a file among them (a table.csv) is skipped. A run is
results.json, options.json (the flags of folders older than results.json's protocol) and log.jsonl.

Protocols. Student runs are grouped by their protocol (helper.naming.protocol_key): the teacher file (sha256, else
path) and the protocol flags: the training flags, the loss weights, the method's own flags and those of the plug-ins
it has on. Another method's flags (an --nce_k on a KD run) do not split it. Runs of one protocol with the same seed
are counted once: the first folder is kept, the others are listed under the table and in the CSV as duplicates, so n
counts distinct seeds. Teachers and from-scratch students (train_teacher.py runs) are grouped by all their flags.

Labels. A student column is the method with its plug-in and variant tags (`kd+ctkd:global`) and, in brackets, its
protocol flags that differ from the method's baseline for the row's pair (helper.naming.baseline_flags: the flag
defaults plus the method's recipe): -r/-a/-b first, then the others by name. A flag whose value is the same in every
student protocol of a table is left out of the labels and said once under the table's title ("All runs: --epochs 1
--test_subset 2000"). So one protocol has one label on every row, and a lone variant is labelled by what differs
(`crd (-a 1 --nce_k 1024)`). Protocols that still share a label on one row are told apart by the flags whose values
differ between them, then by the teacher file (`teacher 1a2b3c4d`: its sha256 prefix).

Cells (--select). One number per cell, over the n seeds of one protocol:
  last (default; RepDistiller): the last-epoch top-1, `mean ± std (n=N)`;
  best (mdistiller, DKD): the best-epoch top-1, `mean ± std (n=N)`;
  median (overhaul-distillation): the median of the last-epoch top-1, `median (n=N)`.
std is the sample standard deviation (n-1), '-' for one run. In a row with two or more method cells, the highest
number (as printed) is bold, ties all bold. The choice is stated in the heading.

Baselines (--with_baselines). Each row (teacher -> student) also carries, as CRD's Table 1, the teacher's top-1 and
the from-scratch student's: train_teacher.py runs of the row's architectures on the same dataset, among the folders
given. The teacher: the teacher protocol whose run folder holds the students' teacher file, else the only one of its
architecture, else (none, or several that cannot be told apart) the accuracy the students recorded for their teacher
file (results.json protocol.teacher.accuracy), marked `recorded`. The student: the only protocol of its architecture,
else the one whose flags agree with most of the flags all the row's students share (said in a note). The teacher
runs shown on rows leave the table of teachers, which otherwise lists every train_teacher.py protocol.

Output. --format md (default) or latex (booktabs tabular in a table float, `$\\pm$`, `\\textbf` for the best) is
printed; --format csv prints the same rows as CSV. --out PATH writes the table there instead (atomically);
--csv PATH writes the CSV there besides (the older spelling). Nothing is written into the run folders.
--columns kd,crd,... keeps those method columns in that order (a method name such as `kd` or `kd+ctkd:global`, or a
whole label). --paper adds the published CIFAR-100 numbers of PAPER, with their sources.

Runs not averaged: unfinished and failed runs are listed under the tables with the reason, and so are damaged or
foreign folders (a run file that is not UTF-8 JSON of the shape helper.runs writes); only when every folder is
damaged is it an error.
"""
import argparse
import csv
import io
import json
import logging
import os
import statistics
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import List, NamedTuple, Optional

from distiller_zoo.base import distiller_registry
from helper.errors import UserError
from helper.naming import baseline_flags, differing_flags, protocol_flags, protocol_key, same_value
from helper.runs.files import write_output, write_text_atomic
from helper.runs.protocol import NOT_PROTOCOL
from helper.runs.records import (
    OPTIONS_FIELDS,
    RECORD_FILES,
    DamagedFile,
    is_number,
    no_usable_run,
    read_json,
    read_log,
    read_results,
)
from helper.tools.launch import MANIFEST, read_manifest
from helper.tools.published import PAPER, PAPER_DATASET, PAPER_VANILLA, paper_number
from helper.util import flag_text as option_text
from helper.util import is_integer

log = logging.getLogger("kd")
WEIGHTS = ("gamma", "alpha", "beta")
DEFAULT_WEIGHTS = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}  # helper.recipes.apply_recipe's where a recipe has none


# ---- reading run folders -------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One run folder: its status ("finished", "failed", "unfinished", "damaged"), why it is not averaged
    (`reason`), its protocol (experiment flags and, for students, the teacher), its seed and its accuracies."""
    folder: str
    status: str
    reason: str = ""
    flags: dict = field(default_factory=dict)
    teacher: Optional[dict] = None
    seed: Optional[int] = None
    last_acc: Optional[float] = None
    best_acc: Optional[float] = None
    analysis: dict = field(default_factory=dict)  # analysis.json (helper.analyze), {} when there is none
    probes: dict = field(default_factory=dict)    # probe.json (helper.probe), {} when there is none

    @property
    def is_student(self):
        return self.teacher is not None or "distill" in self.flags

    @property
    def teacher_id(self):
        """The teacher file that defines the protocol: its sha256, else its path (older folders)."""
        teacher = self.teacher or {}
        return teacher.get("sha256") or teacher.get("path")

    def protocol_key(self):
        return protocol_key(self.flags, self.teacher_id)


def flags_from_options(options):
    """The experiment flags of a folder written before results.json held a protocol, from its options.json."""
    flags = {k: v for k, v in options.items() if k not in NOT_PROTOCOL}
    flags["global_batch"] = (options.get("batch_size") or 0) * (options.get("world_size") or 1)
    return flags


def read_run(folder, strict_log=True):
    """A Run from the files of one run folder; a folder with a damaged file is a "damaged" Run saying which
    (damaged log.jsonl lines only when `strict_log`: helper.plot skips them)."""
    try:
        return run_from_files(folder, strict_log)
    except DamagedFile as e:
        return Run(folder, "damaged", reason=str(e))


def run_from_files(folder, strict_log=True):
    """The Run its results.json, options.json and log.jsonl describe; DamagedFile when one of them is damaged."""
    results = read_results(folder)
    options = read_json(os.path.join(folder, "options.json"), OPTIONS_FIELDS)
    epoch_log = read_log(folder)
    if epoch_log.damaged and strict_log:
        raise DamagedFile(epoch_log.damaged)
    protocol = (results or {}).get("protocol")
    if protocol:
        flags, teacher, seed = protocol.get("flags") or {}, protocol.get("teacher"), protocol.get("seed")
    elif options is not None:
        flags, seed = flags_from_options(options), options.get("seed")
        teacher = {"path": options["path_t"]} if options.get("path_t") else None
    else:
        flags, teacher, seed = {}, None, None
    run = Run(folder, "finished", flags=flags, teacher=teacher, seed=seed if is_integer(seed) else None)
    if run.is_student and flags.get("distill") is None:
        raise DamagedFile("the run records a teacher but not the student's method (distill)")
    records = epoch_log.records
    if results is None:
        reached = f"log.jsonl reaches epoch {records[-1]['step']}" if records else "no epoch logged"
        of = f" of {flags['epochs']}" if records and "epochs" in flags else ""
        run.status, run.reason = "unfinished", f"no results.json (still running, or stopped): {reached}{of}"
    elif results.get("status") == "failed":
        run.status, run.reason = "failed", results.get("error") or "failed (no error recorded)"
    elif not flags:
        run.status, run.reason = "unfinished", "no protocol: neither results.json nor options.json records the flags"
    run.best_acc = results.get("best_acc") if results else None
    run.last_acc = results.get("last_acc") if results else None
    if run.last_acc is None and records:
        run.last_acc = records[-1].get("test_acc")
    if run.status == "finished" and (run.last_acc is None or run.best_acc is None):
        run.status, run.reason = "unfinished", "results.json holds no accuracy"
    run.analysis, run.probes = metric_file(folder, "analysis.json"), metric_file(folder, "probe.json")
    return run


def metric_file(folder, name):
    """<folder>/<name> (helper.analyze's or helper.probe's results) as a dict; {} when absent or unreadable (a
    metric it lacks is then reported as missing)."""
    try:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


# ---- metrics (--metric) --------------------------------------------------------------------------------------------
# name: (what the cells hold, whether higher is better, the value of one run or None)
METRICS = {
    "top1": ("top-1 test accuracy (%)", True, None),
    "agreement": ("top-1 agreement with the teacher (%, helper.analyze)", True, lambda r: r.analysis.get("agreement")),
    "agreement_train": ("top-1 agreement with the teacher on the training images (%, helper.analyze)", True,
                        lambda r: r.analysis.get("agreement_train")),
    "kl": ("mean KL(teacher || student) at T = 1 (helper.analyze)", False, lambda r: r.analysis.get("kl")),
    "kl_train": ("mean KL(teacher || student) at T = 1 on the training images (helper.analyze)", False,
                 lambda r: r.analysis.get("kl_train")),
    "ece": ("expected calibration error (%, helper.analyze)", False,
            lambda r: (r.analysis.get("student") or {}).get("ece")),
    "nll": ("negative log-likelihood (helper.analyze)", False, lambda r: (r.analysis.get("student") or {}).get("nll")),
    "brier": ("Brier score (helper.analyze)", False, lambda r: (r.analysis.get("student") or {}).get("brier")),
    "logit_diff": ("mean class-mean logit difference to the teacher (helper.analyze)", False,
                   lambda r: r.analysis.get("logit_diff_mean")),
    "cka_last": ("linear CKA of the last stages of teacher and student (helper.analyze)", True,
                 lambda r: r.analysis.get("cka_last")),
}


def metric_spec(metric):
    """(description, higher is better, value of a run) of --metric `metric` (probe_<target>: helper.probe's top-1)."""
    if metric.startswith("probe_") and len(metric) > len("probe_"):
        target = metric[len("probe_"):]
        return (f"linear-probe top-1 on {target} (%, helper.probe)", True,
                lambda r: (r.probes.get(target) or {}).get("top1"))
    if metric not in METRICS:
        raise UserError(f"unknown --metric {metric!r}; choose one of: {', '.join(METRICS)}, or probe_<target> "
                        "(e.g. probe_stl10)")
    return METRICS[metric]


def run_value(run, select, metric="top1"):
    """The number of one run for a cell: its last- or best-epoch top-1, or its --metric value (None when missing)."""
    if metric == "top1":
        return run.best_acc if select == "best" else run.last_acc
    value = metric_spec(metric)[2](run)
    return float(value) if is_number(value) else None


def is_run_folder(path):
    return any(os.path.isfile(os.path.join(path, name)) for name in RECORD_FILES)


def find_run_folders(paths):
    """Every run folder in or under `paths` (a path may itself be a run folder, or a helper.launch folder: its
    jobs' run folders); files among the paths (a table.csv) are skipped. One-line errors for a path that does not
    exist, a folder that holds no run, and paths that are all files."""
    folders = []
    for path in paths:
        if not os.path.exists(path):
            raise UserError(f"{path} does not exist")
        if not os.path.isdir(path):
            log.info("skipped %s: a file, not a run folder", path)
            continue
        found = launched_folders(path) if os.path.isfile(os.path.join(path, MANIFEST)) else walk_runs(path)
        if not found:
            raise UserError(f"{path} holds no run folder (none with {', '.join(RECORD_FILES)})")
        folders += found
    if not folders:
        raise UserError(f"{' '.join(paths)}: files, not folders; give the folders that hold the runs")
    return folders


def launched_folders(path):
    """The run folders of a helper.launch folder's jobs that exist."""
    return [f for job in read_manifest(path)["jobs"] for f in job["folders"] if os.path.isdir(f)]


def walk_runs(path):
    """The run folders in or under `path`, sorted."""
    found = []
    for root, dirs, _ in os.walk(path):
        if is_run_folder(root):
            found.append(root)
            dirs.clear()  # a run folder holds no further runs
        else:
            dirs.sort()
    return sorted(found)


def read_runs(paths, strict_log=True):
    """The Runs of every run folder in or under `paths`; a UserError when every one is damaged."""
    runs = [read_run(folder, strict_log) for folder in find_run_folders(paths)]
    if all(r.status == "damaged" for r in runs):
        raise no_usable_run([f"{r.folder}: {r.reason}" for r in runs], "can be read")
    return runs


# ---- protocols -----------------------------------------------------------------------------------------------------
class Stat(NamedTuple):
    """One cell's number: the mean (or median), the sample std (None for one run or a median), the runs."""
    value: float
    std: Optional[float]
    n: int


@dataclass
class Group:
    """The runs of one protocol, one per seed (`duplicates`: (run, the run kept) of a seed seen again); its label
    is `name (parts)`."""
    runs: List[Run]
    duplicates: list = field(default_factory=list)
    name: str = ""
    parts: List[str] = field(default_factory=list)

    @property
    def label(self):
        return f"{self.name} ({' '.join(self.parts)})" if self.parts else self.name

    @property
    def flags(self):
        return self.runs[0].flags

    @property
    def teacher_id(self):
        return self.runs[0].teacher_id

    @property
    def dataset(self):
        return self.flags.get("dataset", "?")

    @property
    def pair(self):
        teacher = self.flags.get("model_t") or (self.runs[0].teacher or {}).get("arch") or "?"
        return teacher, self.flags.get("model_s", "?")


def mean_std(values):
    """Mean and sample standard deviation (n-1; None for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def group_by_protocol(runs):
    """One Group per protocol, in the order of the runs; a run whose protocol and seed an earlier run has is a
    duplicate, not a run of the group."""
    groups = {}
    for run in runs:
        group = groups.setdefault(run.protocol_key(), Group([]))
        kept = next((r for r in group.runs if run.seed is not None and r.seed == run.seed), None)
        if kept is None:
            group.runs.append(run)
        else:
            group.duplicates.append((run, kept))
    return list(groups.values())


def method_name(flags):
    """--distill plus the tags of the plug-ins and method variant in use, as in the run folder's name
    (e.g. "kd+ctkd:global", "crcd+grad:cos")."""
    from distiller_zoo import get_distiller_class
    from helper.plugins import enabled_plugins
    opt = SimpleNamespace(**flags)
    tags = []
    for cls in enabled_plugins(opt):
        try:
            tags.append(cls.tag(opt))
        except AttributeError:  # a folder older than one of the plug-in's flags
            tags.append(cls.name)
    try:
        tags.append(get_distiller_class(flags["distill"]).run_tag(opt))
    except (UserError, AttributeError):  # a method or flag this code no longer has
        pass
    return "+".join([flags["distill"]] + [t for t in tags if t])


def paper_key(flags):
    """The key of PAPER's numbers for a student's method: the --distill name, "crd+kd" for CRD with -a > 0,
    "kd+ctkd" for KD with CTKD; None for other plug-ins or variants (no published number)."""
    name = method_name(flags)
    base, *tags = name.split("+")
    if base == "crd" and not tags and flags.get("alpha", 0):
        return "crd+kd"
    if base == "kd" and len(tags) == 1 and tags[0].startswith("ctkd"):
        return "kd+ctkd"
    return None if tags else base


def flag_text(key, value):
    """One flag, as on the command line ("-a 0.9", "--kd_T 2", "--dot", "no --dot")."""
    return f"global batch {value}" if key == "global_batch" else option_text(key, value)


def differing_parts(group):
    """[(dest, value)] of a student protocol that differ from its method's baseline for its pair: -r/-a/-b, then
    helper.naming.differing_flags; [] for a method this code does not know."""
    flags, (teacher, student) = group.flags, group.pair
    if flags.get("distill") not in distiller_registry:  # a method this code no longer has
        return []
    baseline = baseline_flags(flags["distill"], teacher, student)
    base = {k: DEFAULT_WEIGHTS[k] if baseline.get(k) is None else baseline[k] for k in WEIGHTS}
    weights = [(k, flags[k]) for k in WEIGHTS if k in flags and not same_value(flags[k], base[k])]
    return weights + differing_flags(flags, teacher)


def common_parts(groups, parts):
    """The dests among `parts` ({id(group): [(dest, value)]}) whose value is the same in every group's protocol."""
    protocols = [protocol_flags(g.flags) for g in groups]
    common = []
    for dest, value in (p for g in groups for p in parts[id(g)]):
        if dest not in (c[0] for c in common) and all(dest in f and same_value(f[dest], value) for f in protocols):
            common.append((dest, value))
    return common


def label_students(groups):
    """Label every student group (see the module's docstring); {dataset: [(dest, value)] said once per table}."""
    common_by_dataset = {}
    for dataset in sorted({g.dataset for g in groups}):
        table = [g for g in groups if g.dataset == dataset]
        parts = {id(g): differing_parts(g) for g in table}
        common = common_parts(table, parts)
        common_dests = {dest for dest, _ in common}
        for group in table:
            group.name = method_name(group.flags)
            group.parts = [flag_text(k, v) for k, v in parts[id(group)] if k not in common_dests]
        common_by_dataset[dataset] = common
    split_same_labels(groups, lambda g: (g.dataset, g.pair, g.label))
    return common_by_dataset


TEACHER_KEYS = ("model", "dataset", "learning_rate", "weight_decay", "epochs")


def label_teachers(groups):
    """Label train_teacher.py groups by their model, told apart where the table's columns do not."""
    for group in groups:
        group.name = group.flags.get("model", "?")
    split_same_labels(groups, lambda g: json.dumps([g.flags.get(k) for k in TEACHER_KEYS]))


def split_same_labels(groups, cell):
    """Tell apart the groups of one cell (cell(group): a row's column) that share a label: add the protocol flags
    whose values differ between them, then the teacher file, then a number where values print alike."""
    by_cell = {}
    for group in groups:
        by_cell.setdefault((cell(group), group.label), []).append(group)
    for same in (s for s in by_cell.values() if len(s) > 1):
        flags = [protocol_flags(g.flags) for g in same]
        keys = sorted(set().union(*flags))
        differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flags}) > 1]
        teachers_differ = len({g.teacher_id for g in same}) > 1
        for group, protocol in zip(same, flags):
            texts = [flag_text(k, protocol.get(k)) for k in differing]
            group.parts = group.parts + [t for t in texts if t not in group.parts]
            if teachers_differ:
                group.parts.append(f"teacher {short_teacher(group.teacher_id)}")
        labels = [g.label for g in same]
        for i, group in enumerate(same):
            if labels.count(group.label) > 1:  # values that print alike (2 and 2.0): never merge their cells
                group.parts.append(f"protocol {i + 1}")


def short_teacher(teacher_id):
    """A teacher's sha256 prefix, or its file name for folders that recorded only the path."""
    if teacher_id is None:
        return "unknown"
    return teacher_id[:8] if len(teacher_id) == 64 else os.path.basename(teacher_id)


# ---- cells ---------------------------------------------------------------------------------------------------------
def stat_of(values, select):
    """The Stat of --select `select` over `values` (last- or best-epoch top-1 per run, as `select` says)."""
    values = list(values)
    if select == "median":
        return Stat(statistics.median(values), None, len(values))
    return Stat(*mean_std(values), len(values))


def group_stat(group, select, metric="top1"):
    """The Stat of a group's runs; None when no run has the metric."""
    values = [v for v in (run_value(r, select, metric) for r in group.runs) if v is not None]
    return stat_of(values, select) if values else None


def fmt_std(std):
    return "-" if std is None else f"{std:.2f}"


@dataclass
class Cell:
    """A table cell: `number` (bold when the best of its row), then `rest`; `value` (as printed) ranks it."""
    number: str = ""
    rest: str = ""
    value: Optional[float] = None
    bold: bool = False


def stat_cell(stat, select, paper=None, method=None, recorded=False):
    """`74.07 ± 0.45 (n=3)` (a median: `74.10 (n=3)`), plus the published number where there is one; empty for no
    value (a metric no run of the group has)."""
    if stat is None:
        return Cell(rest="-")
    number = f"{stat.value:.2f}" + ("" if select == "median" else f" ± {fmt_std(stat.std)}")
    rest = f" (n={stat.n}{', recorded' if recorded else ''})"
    if paper is not None:  # the paper's method named when it is not the column's (CRD -a 1: "crd+kd")
        named = "" if paper.method == method else f" ({paper.method})"
        rest += f" · paper{named} {paper.value:.2f}{'' if paper.source.verified else '?'}"
    return Cell(number, rest, round(stat.value, 2))


def bold_best(cells, higher_is_better=True):
    """Mark the best cells of a row (two or more numbers) bold: the highest, or the lowest for a metric where lower
    is better (KL, ECE...)."""
    values = [c.value for c in cells if c.value is not None]
    if len(values) > 1:
        best = max(values) if higher_is_better else min(values)
        for cell in cells:
            cell.bold = cell.value == best


# ---- the report ----------------------------------------------------------------------------------------------------
@dataclass
class Settings:
    """What the command line chose: --select, --paper, --with_baselines, --columns (None: every column)."""
    select: str = "last"
    paper: bool = False
    baselines: bool = False
    columns: Optional[List[str]] = None
    metric: str = "top1"


@dataclass
class Table:
    """One table: its title, the lines under it, its header and rows, and the heading's sentences about it (a LaTeX
    caption holds them)."""
    title: str
    notes: List[str]
    header: List[str]
    rows: List[List[Cell]]
    about: List[str]


@dataclass
class Report:
    """What every format prints: the heading, the tables, the lines under them (`notes`; `choices`: which
    from-scratch protocol a row shows) and the CSV rows."""
    settings: Settings
    heading: List[str] = field(default_factory=list)
    tables: List[Table] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    choices: List[str] = field(default_factory=list)
    rows: List[dict] = field(default_factory=list)
    sources: list = field(default_factory=list)
    used_teachers: list = field(default_factory=list)

    def add_paper(self, paper):
        if paper is not None and paper.source not in self.sources:
            self.sources.append(paper.source)
        return paper


SELECTED = {"last": "the last-epoch top-1, mean ± sample std (n-1; '-' for one run)",
            "best": "the best-epoch top-1, mean ± sample std (n-1; '-' for one run)",
            "median": "the median of the last-epoch top-1"}


def heading(settings):
    """The sentences that say what the cells hold: the first of every table, then those of the student tables."""
    if settings.metric == "top1":
        first = f"Top-1 test accuracy (%), --select {settings.select}: {SELECTED[settings.select]}"
    else:
        what, higher, _ = metric_spec(settings.metric)
        how = "the median" if settings.select == "median" else "mean ± sample std"
        first = (f"--metric {settings.metric}: {what}, {how} ({'higher' if higher else 'lower'} is better; n counts "
                 "the runs that have it, '-' none)")
    sentences = [f"{first} over the n seeds of one protocol (same teacher file and protocol flags; a seed run twice "
                 "counts once).",
                 "Columns: the method and its flags that differ from its recipe for the pair; bold: the best method "
                 "of each row."]
    if settings.baselines:
        sentences.append("teacher, student (scratch): train_teacher.py runs of the row's teacher and of its student "
                         "trained from scratch (recorded: the teacher accuracy the students recorded).")
    if settings.paper:
        sentences.append("paper: the published CIFAR-100 top-1 of that pair and method (sources at the end).")
    return sentences


# ---- the student tables --------------------------------------------------------------------------------------------
def method_order(label):
    """Columns in the order of helper.recipes (KD first), then by name."""
    from helper.recipes import RECIPES
    order = list(RECIPES)
    base = label.split(" ")[0].split("+")[0]
    return (order.index(base) if base in order else len(order), label)


def matches(name, label):
    """Whether a --columns name picks a column: its whole label, or its method (`kd`, `kd+ctkd:global`)."""
    return name == label or name == label.split(" (")[0]


def check_columns(names, groups):
    found = sorted({g.label for g in groups}, key=method_order)
    for name in names:
        if not any(matches(name, label) for label in found):
            raise UserError(f"--columns: {name!r} matches no column; the columns found: {', '.join(found) or 'none'}")


def chosen_columns(labels, names):
    """The labels in their default order, or those `names` pick in the order of the names."""
    labels = sorted(labels, key=method_order)
    if names is None:
        return labels
    rank = {label: min(i for i, name in enumerate(names) if matches(name, label))
            for label in labels if any(matches(name, label) for name in names)}
    return sorted(rank, key=lambda label: (rank[label], labels.index(label)))


def student_table(report, dataset, groups, common, teachers):
    """The table of one dataset: rows teacher -> student, columns methods (after the baselines)."""
    settings = report.settings
    columns = chosen_columns({g.label for g in groups}, settings.columns)
    cells = {(g.pair, g.label): g for g in groups}
    rows = []
    for pair in sorted({g.pair for g in groups}):
        row_groups = [cells[pair, c] for c in columns if (pair, c) in cells]
        if not row_groups:
            continue
        method_cells = [student_cell(report, cells.get((pair, c))) for c in columns]
        bold_best(method_cells, metric_spec(settings.metric)[1])
        baselines = baseline_cells(report, dataset, pair, row_groups, teachers) if settings.baselines else []
        rows.append([Cell(rest=f"{pair[0]} -> {pair[1]}")] + baselines + method_cells)
    if rows:
        header = ["teacher -> student"] + (["teacher", "student (scratch)"] if settings.baselines else []) + columns
        notes = [f"All runs: {' '.join(flag_text(k, v) for k, v in common)}."] if common else []
        report.tables.append(Table(f"Students on {dataset}", notes, header, rows, report.heading))


def student_cell(report, group):
    if group is None:
        return Cell()
    select, metric = report.settings.select, report.settings.metric
    paper = report.add_paper(student_paper(group)) if report.settings.paper and metric == "top1" else None
    report.rows.append(csv_row("student", group, select, paper, teacher=group.pair[0], model=group.pair[1],
                               method=method_name(group.flags), metric=metric))
    return stat_cell(group_stat(group, select, metric), select, paper, method_name(group.flags))


def student_paper(group):
    key = paper_key(group.flags)
    return paper_number(group.pair, key, PAPER) if group.dataset == PAPER_DATASET and key else None


def vanilla_paper(model, dataset):
    return paper_number((model, ""), "vanilla", [PAPER_VANILLA]) if dataset == PAPER_DATASET else None


# ---- baselines on the rows -----------------------------------------------------------------------------------------
def baseline_cells(report, dataset, pair, row_groups, teachers):
    """The row's teacher and from-scratch student cells (--with_baselines)."""
    of_arch = {arch: [g for g in teachers if g.dataset == dataset and g.flags.get("model") == arch] for arch in pair}
    teacher = teacher_group(of_arch[pair[0]], row_groups)
    scratch = scratch_group(of_arch[pair[1]], row_groups)
    if len(of_arch[pair[1]]) > 1 and scratch is not None:
        folders = ", ".join(r.folder for r in scratch.runs)
        report.choices.append(f"- {pair[0]} -> {pair[1]} on {dataset}: {len(of_arch[pair[1]])} from-scratch "
                              f"protocols of {pair[1]}; shown: {folders} (the closest to the students' flags)")
    return [recorded_teacher_cell(report, dataset, pair, row_groups) if teacher is None
            else baseline_cell(report, teacher, pair, "teacher"),
            Cell() if scratch is None else baseline_cell(report, scratch, pair, "student (scratch)")]


def teacher_files(row_groups):
    """The run folders that hold the row's teacher files (the folders of the recorded paths)."""
    paths = {(r.teacher or {}).get("path") for g in row_groups for r in g.runs}
    return {os.path.realpath(os.path.dirname(p)) for p in paths if p}


def teacher_group(candidates, row_groups):
    """The train_teacher.py protocol of the row's teacher: the one whose run folder holds the teacher file, else
    the only one; None where there is none or several cannot be told apart."""
    files = teacher_files(row_groups)
    holding = [g for g in candidates if any(os.path.realpath(r.folder) in files for r in g.runs)]
    if len(holding) == 1:
        return holding[0]
    return candidates[0] if len(candidates) == 1 else None


def scratch_group(candidates, row_groups):
    """The from-scratch protocol of the row's student: the only one, else the one whose flags agree with most of
    the flags every student of the row shares (then the most runs, then the first)."""
    if len(candidates) < 2:
        return candidates[0] if candidates else None
    shared = {k: v for k, v in row_groups[0].flags.items()
              if all(same_value(g.flags.get(k), v) for g in row_groups)}
    return max(candidates, key=lambda g: (sum(k in g.flags and same_value(g.flags[k], v) for k, v in shared.items()),
                                          len(g.runs)))


def baseline_cell(report, group, pair, label):
    select, model, metric = report.settings.select, group.flags.get("model", "?"), report.settings.metric
    report.used_teachers.append(group)
    paper = report.add_paper(vanilla_paper(model, group.dataset)) if report.settings.paper and metric == "top1" else None
    report.rows.append(csv_row("baseline", group, select, paper, teacher=pair[0], model=pair[1], method="vanilla",
                               label=label, metric=metric))
    return stat_cell(group_stat(group, select, metric), select, paper, "vanilla")


def recorded_teacher_cell(report, dataset, pair, row_groups):
    """The teacher accuracy the row's students recorded, one value per teacher file; empty when none did."""
    recorded = {r.teacher_id: r.teacher.get("accuracy") for g in row_groups for r in g.runs
                if is_number((r.teacher or {}).get("accuracy"))}
    if not recorded or report.settings.metric != "top1":
        return Cell()
    select = report.settings.select
    stat = stat_of(recorded.values(), "median" if select == "median" else "last")
    report.rows.append({**csv_stat(stat, select), "kind": "baseline", "dataset": dataset, "teacher": pair[0],
                        "model": pair[1], "method": "vanilla", "label": "teacher", "status": "recorded",
                        "reason": "protocol.teacher.accuracy recorded by the students (one per teacher file)"})
    return stat_cell(stat, select, recorded=True)


# ---- the table of teachers -----------------------------------------------------------------------------------------
def teacher_table(report, groups):
    """The train_teacher.py protocols (teachers and vanilla students) not shown on a row: one row each."""
    settings = report.settings
    groups = sorted(groups, key=lambda g: [str(g.flags.get(k)) for k in ("dataset", "model")] + [g.label])
    rows = []
    for group in groups:
        paper = report.add_paper(vanilla_paper(group.flags.get("model"), group.dataset)) if settings.paper else None
        texts = [group.label, *(str(group.flags.get(k, "?")) for k in TEACHER_KEYS[1:])]
        rows.append([Cell(rest=t) for t in texts]
                    + [stat_cell(group_stat(group, settings.select, settings.metric), settings.select)]
                    + ([Cell(rest="" if paper is None else f"{paper.value:.2f}")] if settings.paper else []))
        report.rows.append(csv_row("teacher", group, settings.select, paper, model=group.flags.get("model", "?"),
                                   method="vanilla", metric=settings.metric))
    header = ["model", "dataset", "lr", "wd", "epochs", "top-1 (n)"] + (["paper"] if settings.paper else [])
    report.tables.append(Table("Teachers and vanilla students", [], header, rows, report.heading[:1]))


# ---- CSV rows ------------------------------------------------------------------------------------------------------
CSV_FIELDS = ["kind", "dataset", "teacher", "model", "method", "label", "status", "n", "metric", "select", "value",
              "std",
              "last_mean", "last_std", "best_mean", "best_std", "paper", "paper_method", "paper_verified", "folders",
              "reason"]


def csv_number(value):
    return "" if value is None else f"{value:.4f}"


def csv_stat(stat, select):
    if stat is None:  # no run of the group has the metric
        return {"n": 0, "select": select, "value": "", "std": ""}
    return {"n": stat.n, "select": select, "value": csv_number(stat.value), "std": csv_number(stat.std)}


def csv_row(kind, group, select, paper, teacher="", model="", method="", label=None, metric="top1"):
    last = mean_std([r.last_acc for r in group.runs])
    best = mean_std([r.best_acc for r in group.runs])
    return {**csv_stat(group_stat(group, select, metric), select), "metric": metric, "kind": kind, "dataset": group.dataset,
            "teacher": teacher, "model": model, "method": method, "label": group.label if label is None else label,
            "status": "finished", "last_mean": csv_number(last[0]), "last_std": csv_number(last[1]),
            "best_mean": csv_number(best[0]), "best_std": csv_number(best[1]),
            "paper": "" if paper is None else f"{paper.value:.2f}",
            "paper_method": "" if paper is None else paper.method,
            "paper_verified": "" if paper is None else str(paper.source.verified).lower(),
            "folders": ";".join(r.folder for r in group.runs)}


def run_row(run, status, reason):
    """The CSV row of a run that is not averaged (unfinished, failed, damaged) or counted once (duplicate)."""
    if run.status == "damaged":  # nothing of its protocol was read
        return {"status": status, "n": 0, "folders": run.folder, "reason": reason}
    flags = run.flags
    return {"kind": "student" if run.is_student else "teacher", "dataset": flags.get("dataset", ""),
            "teacher": flags.get("model_t", "") if run.is_student else "",
            "model": flags.get("model_s" if run.is_student else "model", ""),
            "method": flags.get("distill", "") if run.is_student else "vanilla", "label": "", "status": status,
            "n": 0, "folders": run.folder, "reason": reason}


def csv_text(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


# ---- building the report -------------------------------------------------------------------------------------------
def build_report(paths, settings=None):
    """The Report of the run folders in or under `paths`."""
    settings = settings or Settings()
    runs = read_runs(paths)
    finished = [r for r in runs if r.status == "finished"]
    skipped = [r for r in runs if r.status != "finished"]
    students = group_by_protocol([r for r in finished if r.is_student])
    teachers = group_by_protocol([r for r in finished if not r.is_student])
    common = label_students(students)
    label_teachers(teachers)
    if settings.columns is not None:
        check_columns(settings.columns, students)
    report = Report(settings, heading(settings))
    for dataset in sorted(common):
        student_table(report, dataset, [g for g in students if g.dataset == dataset], common[dataset], teachers)
    shown = [g for g in teachers if not any(g is used for used in report.used_teachers)]
    if shown:
        teacher_table(report, shown)
    duplicates = [(run, f"same protocol and seed {run.seed} as {kept.folder}; counted once")
                  for g in students + teachers for run, kept in g.duplicates]
    report.rows += [run_row(run, "duplicate", reason) for run, reason in duplicates]
    report.rows += [run_row(r, r.status, r.reason) for r in skipped]
    report.notes = footer(report, finished, skipped, duplicates)
    return report


def footer(report, finished, skipped, duplicates):
    """The lines under the tables: baseline choices, duplicates, runs not averaged, published sources."""
    lines = []
    if report.choices:
        lines += ["From-scratch students chosen among several protocols:", *report.choices, ""]
    if not finished:
        lines += ["No finished run.", ""]
    if duplicates:
        lines += ["Counted once (the same protocol and seed as a run counted):"]
        lines += [f"- {run.folder}: {reason}" for run, reason in duplicates] + [""]
    if skipped:
        lines += ["Not averaged (unfinished, failed or damaged):"]
        lines += [f"- {r.folder}: {r.status}: {r.reason}" for r in skipped] + [""]
    if report.sources:
        lines += ["Published numbers (paper; '?' = not verified against the authors' own table):"]
        lines += [f"- {s.source}" + ("" if s.verified else " [?]") for s in report.sources] + [""]
    return lines


# ---- formats -------------------------------------------------------------------------------------------------------
def markdown_cell(cell):
    return (f"**{cell.number}**" if cell.bold else cell.number) + cell.rest


def markdown_row(texts):
    return "| " + " | ".join(texts) + " |"


def markdown(report):
    lines = [" ".join(report.heading), ""]
    for table in report.tables:
        lines += [f"## {table.title}", ""] + ([*table.notes, ""] if table.notes else [])
        lines += [markdown_row(table.header), "|---" * len(table.header) + "|"]
        lines += [markdown_row(markdown_cell(c) for c in row) for row in table.rows] + [""]
    return "\n".join(lines + report.notes).rstrip() + "\n"


TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
       "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "·": r"$\cdot$", "`": ""}


def tex(text):
    """Text as LaTeX: special characters escaped, ± and · in math, `->` an arrow, `--` kept two hyphens."""
    text = "".join(TEX.get(c, c) for c in text)
    return text.replace(" -> ", r" $\rightarrow$ ").replace("--", "-{}-")


def latex_cell(cell):
    return (rf"\textbf{{{tex(cell.number)}}}" if cell.bold else tex(cell.number)) + tex(cell.rest)


def latex(report):
    """One booktabs table float per table (needs \\usepackage{booktabs}); the notes as comments."""
    lines = [r"% helper.table; needs \usepackage{booktabs}"]
    for table in report.tables:
        caption = " ".join([table.title + "."] + table.notes + table.about)
        lines += [r"\begin{table}[t]", r"  \centering", rf"  \caption{{{tex(caption)}}}",
                  rf"  \begin{{tabular}}{{l{'c' * (len(table.header) - 1)}}}", r"    \toprule",
                  "    " + " & ".join(tex(h) for h in table.header) + r" \\", r"    \midrule"]
        lines += ["    " + " & ".join(latex_cell(c) for c in row) + r" \\" for row in table.rows]
        lines += [r"    \bottomrule", r"  \end{tabular}", r"\end{table}", ""]
    lines += [f"% {line}" for line in report.notes if line]
    return "\n".join(lines).rstrip() + "\n"


FORMATS = {"md": markdown, "latex": latex, "csv": lambda report: csv_text(report.rows)}


def build(paths, with_paper=False, select="last", with_baselines=False, columns=None, fmt="md", metric="top1"):
    """(the table as text in format `fmt`, the CSV rows) of the run folders in or under `paths`."""
    metric_spec(metric)
    report = build_report(paths, Settings(select, with_paper, with_baselines, columns, metric))
    return FORMATS[fmt](report), report.rows


def parse_columns(text):
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise UserError(f"--columns {text!r} has an empty name; give method names separated by commas (kd,crd)")
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description="Tables of the runs in run folders, ready for a paper: students "
                                                 "grouped by protocol and labelled by what differs from their "
                                                 "method's recipe, one number per cell (--select), as Markdown, "
                                                 "LaTeX or CSV.")
    parser.add_argument("folders", nargs="+", help="run folders, folders holding them (save/student_model, "
                                                   "save/models) or helper.launch folders; files are skipped")
    parser.add_argument("--select", choices=sorted(SELECTED), default="last",
                        help="the number per cell: last = last-epoch top-1 (RepDistiller), best = best-epoch top-1 "
                             "(mdistiller, DKD), median = median of the last-epoch top-1 (default: last)")
    parser.add_argument("--format", dest="fmt", choices=sorted(FORMATS), default="md",
                        help="md (Markdown), latex (booktabs) or csv (default: md)")
    parser.add_argument("--out", metavar="PATH", default=None, help="write the table (in --format) to this file instead of printing "
                                                    "it (default: print it; nothing goes into the run folders)")
    parser.add_argument("--csv", metavar="PATH", default=None,
                        help="also write the CSV to this file, whatever --format prints (kept from earlier versions; "
                             "there is no default file any more)")
    parser.add_argument("--columns", metavar="NAMES", type=parse_columns, default=None,
                        help="the method columns to show, in this order: method names (kd,crd,kd+ctkd:global) or "
                             "whole labels, separated by commas (default: every column, KD first)")
    parser.add_argument("--with_baselines", action="store_true",
                        help="put the teacher's and the from-scratch student's top-1 on each row (train_teacher.py "
                             "runs among the folders), as CRD's Table 1")
    parser.add_argument("--paper", action="store_true", help="add the published CIFAR-100 top-1 where one exists")
    parser.add_argument("--metric", default="top1",
                        help="what the cells hold: top1 (default), the numbers of helper.analyze (agreement, kl, "
                             "agreement_train, kl_train, ece, nll, brier, logit_diff, cka_last; analysis.json in each "
                             "run folder) or probe_<target> (helper.probe's linear-probe top-1, probe.json); lower is "
                             "better for kl, ece, nll, brier and logit_diff (bold: the lowest)")
    args = parser.parse_args(argv)
    metric_spec(args.metric)  # an unknown --metric: one line before any folder is read
    report = build_report(args.folders, Settings(args.select, args.paper, args.with_baselines, args.columns,
                                                 args.metric))
    text = FORMATS[args.fmt](report)
    if args.csv:
        write_output(args.csv, "--csv", lambda path: write_text_atomic(path, csv_text(report.rows)))
        log.info("CSV: %s", args.csv)
    if args.out:
        write_output(args.out, "--out", lambda path: write_text_atomic(path, text))
        log.info("table: %s", args.out)
    else:
        print(text, end="")
    return text


if __name__ == "__main__":
    from helper.options import run_cli
    run_cli(main)
