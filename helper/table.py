"""Tables of results from run folders: `python -m helper.table save/student_model [save/models] [--csv PATH] [--paper]`.

Every run folder under the given folders is read (results.json; options.json for folders written before results.json
recorded a protocol). Finished runs are grouped by protocol: the teacher file (sha256, else path) and every
experiment flag (helper.protocol: seed and trial excluded), so runs are never averaged across protocols. Students:
rows are teacher -> student pairs, columns methods, one table per dataset; teachers (and vanilla students, both from
train_teacher.py): one row per model and protocol. Cells: mean ± sample std (n-1) of the last-epoch and of the best
top-1 over the runs of one protocol. Unfinished and failed runs are listed under the tables, never averaged, and so
are damaged or foreign folders (a run file that is not UTF-8 JSON of the shape helper/run.py writes), with the
reason; only when every folder is damaged is it an error. The same figures go to a CSV file. `--paper` adds the
published CIFAR-100 numbers of PAPER (below), with their sources.
"""
import argparse
import csv
import json
import logging
import math
import os
import statistics
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Dict, List, NamedTuple, Optional, Tuple

from helper.errors import UserError
from helper.protocol import NOT_PROTOCOL
from helper.util import is_integer, write_output

RUN_FILES = ("results.json", "options.json", "log.jsonl")
log = logging.getLogger("kd")


# ---- published numbers ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PaperSet:
    """Published CIFAR-100 top-1 (%) per (teacher, student) pair and method key (see paper_key); `verified`: read
    from the authors' own repository; False: second-hand or ambiguous, shown with a "?" and explained in `source`."""
    source: str
    verified: bool
    numbers: Dict[Tuple[str, str], Dict[str, float]]


def _columns(pairs, rows):
    """{pair: {method: top-1}} from a paper table given as one tuple per method, one entry per pair (None: n/a)."""
    table = {pair: {} for pair in pairs}
    for method, values in rows.items():
        for pair, value in zip(pairs, values, strict=True):
            if value is not None:
                table[pair][method] = value
    return table


CRD_TABLE1 = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
              ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")]
CRD_TABLE2 = [("vgg13", "MobileNetV2"), ("ResNet50", "MobileNetV2"), ("ResNet50", "vgg8"), ("resnet32x4", "ShuffleV1"),
              ("resnet32x4", "ShuffleV2"), ("wrn_40_2", "ShuffleV1")]
REPDISTILLER_README = ("CRD (Tian et al., ICLR 2020) Tables 1 and 2, as given in the authors' RepDistiller README "
                       "(github.com/HobbitLong/RepDistiller)")
PAPER: List[PaperSet] = [
    PaperSet(REPDISTILLER_README, True, {
        **_columns(CRD_TABLE1, {
            "kd": (74.92, 73.54, 70.66, 70.67, 73.08, 73.33, 72.98),
            "hint": (73.58, 72.24, 69.21, 68.99, 71.06, 73.50, 71.02),
            "attention": (74.08, 72.77, 70.55, 70.22, 72.31, 73.44, 71.43),
            "similarity": (73.83, 72.43, 69.67, 70.04, 72.69, 72.94, 72.68),
            "correlation": (73.56, 72.21, 69.63, 69.48, 71.48, 72.97, 70.71),
            "vid": (74.11, 73.30, 70.38, 70.16, 72.61, 73.09, 71.23),
            "rkd": (73.35, 72.22, 69.61, 69.25, 71.82, 71.90, 71.48),
            "pkt": (74.54, 73.45, 70.34, 70.25, 72.61, 73.64, 72.88),
            "abound": (72.50, 72.38, 69.47, 69.53, 70.98, 73.17, 70.94),
            "factor": (73.25, 71.59, 69.84, 70.22, 72.37, 72.86, 70.58),
            "fsp": (72.91, None, 69.95, 70.11, 71.89, 72.62, 70.23),  # n/a for wrn_40_2 -> wrn_40_1 (widths differ)
            "nst": (73.68, 72.24, 69.60, 69.53, 71.96, 73.30, 71.53),
            "crd": (75.48, 74.14, 71.16, 71.46, 73.48, 75.51, 73.94)}),
        **_columns(CRD_TABLE2, {
            "kd": (67.37, 67.35, 73.81, 74.07, 74.45, 74.83),
            "hint": (64.14, 63.16, 70.69, 73.59, 73.54, 73.73),
            "attention": (59.40, 58.58, 71.84, 71.73, 72.73, 73.32),
            "similarity": (66.30, 68.08, 73.34, 73.48, 74.56, 74.52),
            "correlation": (64.86, 65.43, 70.25, 71.14, 71.29, 71.38),
            "vid": (65.56, 67.57, 70.30, 73.38, 73.40, 73.61),
            "rkd": (64.52, 64.43, 71.50, 72.28, 73.21, 72.21),
            "pkt": (67.13, 66.52, 73.01, 74.10, 74.69, 73.89),
            "abound": (66.06, 67.20, 70.65, 73.55, 74.31, 73.34),
            "factor": (61.78, 60.99, 70.29, 71.75, 72.50, 72.03),
            "nst": (58.16, 64.96, 71.28, 74.12, 74.68, 74.89),
            "crd": (69.73, 69.11, 74.30, 75.11, 75.65, 76.05)})}),
    PaperSet("CRD Tables 1 and 2, CRD+KD row: not in the RepDistiller README; quoted from the paper by three forks' "
             "READMEs (Table 1) and one (Table 2), not checked against the paper itself", False, {
                 **_columns(CRD_TABLE1, {"crd+kd": (75.64, 74.38, 71.63, 71.56, 73.75, 75.46, 74.29)}),
                 **_columns(CRD_TABLE2, {"crd+kd": (69.94, 69.54, 74.58, 75.12, 76.05, 76.27)})}),
    PaperSet("DKD (Zhao et al., CVPR 2022) Tables 1 and 2, as given in the authors' mdistiller README "
             "(github.com/megvii-research/mdistiller)", True, {
                 ("resnet56", "resnet20"): {"dkd": 71.97}, ("resnet110", "resnet32"): {"dkd": 74.11},
                 ("resnet32x4", "resnet8x4"): {"dkd": 76.32}, ("wrn_40_2", "wrn_16_2"): {"dkd": 76.23},
                 ("wrn_40_2", "wrn_40_1"): {"dkd": 74.81}, ("vgg13", "vgg8"): {"dkd": 74.68},
                 ("resnet32x4", "ShuffleV1"): {"dkd": 76.45}, ("wrn_40_2", "ShuffleV1"): {"dkd": 76.70},
                 ("vgg13", "MobileNetV2"): {"dkd": 69.71}, ("ResNet50", "MobileNetV2"): {"dkd": 70.35}}),
    PaperSet("DKD, mdistiller README: this column is headed 'ResNet32x4 -> MobileNet-V2' there, but its KD baseline "
             "(74.45) is CRD's resnet32x4 -> ShuffleV2 and mdistiller's DKD configs have res32x4_shuv2, no "
             "resnet32x4 -> MobileNetV2; the pair is inferred", False, {
                 ("resnet32x4", "ShuffleV2"): {"dkd": 77.07}}),
    PaperSet("CTKD (Li et al., AAAI 2023), '+CTKD' on KD, as given in the authors' README (github.com/zhengli97/CTKD); "
             "it does not say global or instance temperature (its script runs global), so it is shown for both", True, {
                 ("resnet56", "resnet20"): {"kd+ctkd": 71.19}, ("resnet110", "resnet32"): {"kd+ctkd": 73.52},
                 ("resnet110", "resnet20"): {"kd+ctkd": 70.99}, ("wrn_40_2", "wrn_16_2"): {"kd+ctkd": 75.45},
                 ("wrn_40_2", "wrn_40_1"): {"kd+ctkd": 73.93}, ("vgg13", "vgg8"): {"kd+ctkd": 73.52}}),
]
# Teachers and vanilla students (trained alone, cross-entropy), CRD Tables 1 and 2's first row.
PAPER_VANILLA = PaperSet(REPDISTILLER_README, True, {
    (arch, ""): {"vanilla": acc} for arch, acc in {
        "wrn_40_2": 75.61, "resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "vgg13": 74.64,
        "ResNet50": 79.34, "wrn_16_2": 73.26, "wrn_40_1": 71.98, "resnet20": 69.06, "resnet32": 71.14,
        "resnet8x4": 72.50, "vgg8": 70.36, "MobileNetV2": 64.60, "ShuffleV1": 70.50, "ShuffleV2": 71.82}.items()})
PAPER_DATASET = "cifar100"


class Published(NamedTuple):
    """A published number: its value, the PaperSet it comes from, and the paper's method key."""
    value: float
    source: PaperSet
    method: str


def paper_number(pair, key, sets) -> Optional[Published]:
    """The published top-1 of method `key` on `pair`, or None."""
    for paper_set in sets:
        value = paper_set.numbers.get(pair, {}).get(key)
        if value is not None:
            return Published(value, paper_set, key)
    return None


# ---- reading run folders -------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One run folder: its status ("finished", "failed", "unfinished", "damaged"), why it is not averaged
    (`reason`), its protocol (experiment flags and, for students, the teacher) and its accuracies."""
    folder: str
    status: str
    reason: str = ""
    flags: dict = field(default_factory=dict)
    teacher: Optional[dict] = None
    last_acc: Optional[float] = None
    best_acc: Optional[float] = None

    @property
    def is_student(self):
        return self.teacher is not None or "distill" in self.flags

    @property
    def teacher_id(self):
        """The teacher file that defines the protocol: its sha256, else its path (older folders)."""
        teacher = self.teacher or {}
        return teacher.get("sha256") or teacher.get("path")

    def protocol_key(self):
        return json.dumps([self.flags, self.teacher_id], sort_keys=True)


class DamagedFile(UserError):
    """A run file that is there but cannot be used: unreadable, not UTF-8, not JSON, or JSON of another shape."""


def is_number(value):
    return (is_integer(value) or isinstance(value, float)) and math.isfinite(value)


NUMBER, INTEGER, TEXT, OBJECT = "a finite number", "an integer", "a string", "an object"
IS_KIND = {NUMBER: is_number, INTEGER: is_integer,
           TEXT: lambda v: isinstance(v, str), OBJECT: lambda v: isinstance(v, dict)}
# The fields the tables read (absent or null: not recorded); the names are sorted, compared and printed.
NAME_FLAGS = dict.fromkeys(("distill", "model", "model_s", "model_t", "dataset"), TEXT)
RESULTS_FIELDS = {"status": TEXT, "error": TEXT, "best_acc": NUMBER, "last_acc": NUMBER, "protocol": OBJECT}
PROTOCOL_FIELDS = {"flags": OBJECT, "teacher": OBJECT}
TEACHER_FIELDS = {"path": TEXT, "arch": TEXT, "sha256": TEXT}
OPTIONS_FIELDS = {**NAME_FLAGS, "path_t": TEXT, "batch_size": INTEGER, "world_size": INTEGER}


def shown(value):
    """A JSON value as a message quotes it (40 characters at most)."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def checked(content, where, fields):
    """`content` when it is a JSON object whose `fields` (key -> kind) are absent, null or of their kind; else a
    DamagedFile naming `where` and the first value that is not."""
    if not isinstance(content, dict):
        raise DamagedFile(f"{where}: {shown(content)} is not {OBJECT}")
    for key, kind in fields.items():
        value = content.get(key)
        if value is not None and not IS_KIND[kind](value):
            raise DamagedFile(f"{where}: {key} {shown(value)} is not {kind}")
    return content


def read_json(path, fields):
    """A run's JSON file, checked against `fields`; None when there is none."""
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise DamagedFile(f"{name} cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DamagedFile(f"{name} is not UTF-8 text") from None
    except ValueError as e:
        raise DamagedFile(f"{name} is not valid JSON ({e})") from None
    return checked(content, name, fields)


def read_results(folder):
    """<folder>/results.json (None when there is none), with its protocol checked."""
    results = read_json(os.path.join(folder, "results.json"), RESULTS_FIELDS)
    protocol = (results or {}).get("protocol")
    if protocol:
        checked(protocol, "results.json protocol", PROTOCOL_FIELDS)
        checked(protocol.get("flags") or {}, "results.json protocol.flags", NAME_FLAGS)
        checked(protocol.get("teacher") or {}, "results.json protocol.teacher", TEACHER_FIELDS)
    return results


class EpochLog(NamedTuple):
    """The usable epoch records of a log.jsonl, in epoch order, and a line on the damaged lines skipped ("": none)."""
    records: List[dict]
    damaged: str


def epoch_record(line):
    """The epoch record on one line of log.jsonl; None for a blank line or another kind of record. ValueError for a
    line that is not UTF-8 JSON; DamagedFile for an object whose step is not an integer or whose values are not all
    finite numbers (RunLogger writes nothing else)."""
    if not line.strip():
        return None
    record = json.loads(line.decode("utf-8"))
    if not isinstance(record, dict):
        raise DamagedFile(f"{shown(record)} is not {OBJECT}")
    if record.get("kind", "epoch") != "epoch":
        return None
    if not IS_KIND[INTEGER](record.get("step")):
        raise DamagedFile(f"step {shown(record.get('step'))} is not {INTEGER}")
    for key, value in record.items():
        if key not in ("kind", "step") and not is_number(value):
            raise DamagedFile(f"{key} {shown(value)} is not {NUMBER}")
    return record


def read_log(folder):
    """The epoch records of <folder>/log.jsonl (the last one per epoch). A last line without its newline is a write
    in progress (or cut by a kill) and is left out when it does not parse; every other line that is no usable record
    is skipped and counted in `damaged`."""
    try:
        with open(os.path.join(folder, "log.jsonl"), "rb") as f:
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return EpochLog([], "")
    except OSError as e:
        raise DamagedFile(f"log.jsonl cannot be read ({e.strerror or e})") from None
    by_epoch, problems = {}, []
    for number, line in enumerate(lines, 1):
        try:
            record = epoch_record(line)
        except DamagedFile as e:
            problems.append(f"line {number}: {e}")
        except ValueError as e:
            if number < len(lines):  # else the last line, without its newline: a write in progress
                problems.append(f"line {number}: not {'UTF-8 text' if isinstance(e, UnicodeDecodeError) else 'JSON'}")
        else:
            if record is not None:
                by_epoch[record["step"]] = record
    damaged = ""
    if problems:
        damaged = (f"log.jsonl: {len(problems)} damaged line{'s' if len(problems) > 1 else ''} skipped "
                   f"({problems[0]}{', ...' if len(problems) > 1 else ''})")
    return EpochLog([by_epoch[step] for step in sorted(by_epoch)], damaged)


def flags_from_options(options):
    """The experiment flags of a folder written before results.json held a protocol, from its options.json."""
    flags = {k: v for k, v in options.items() if k not in NOT_PROTOCOL}
    flags["global_batch"] = (options.get("batch_size") or 0) * (options.get("world_size") or 1)
    return flags


def read_run(folder):
    """A Run from the files of one run folder; a folder with a damaged file is a "damaged" Run saying which."""
    try:
        return run_from_files(folder)
    except DamagedFile as e:
        return Run(folder, "damaged", reason=str(e))


def run_from_files(folder):
    """The Run its results.json, options.json and log.jsonl describe; DamagedFile when one of them is damaged."""
    results = read_results(folder)
    options = read_json(os.path.join(folder, "options.json"), OPTIONS_FIELDS)
    epoch_log = read_log(folder)
    if epoch_log.damaged:
        raise DamagedFile(epoch_log.damaged)
    protocol = (results or {}).get("protocol")
    if protocol:
        flags, teacher = protocol.get("flags") or {}, protocol.get("teacher")
    elif options is not None:
        flags = flags_from_options(options)
        teacher = {"path": options["path_t"]} if options.get("path_t") else None
    else:
        flags, teacher = {}, None
    run = Run(folder, "finished", flags=flags, teacher=teacher)
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
    return run


def is_run_folder(path):
    return any(os.path.isfile(os.path.join(path, name)) for name in RUN_FILES)


def find_run_folders(paths):
    """Every run folder in or under `paths` (a path may itself be a run folder); one-line errors for a path that
    does not exist or holds no run."""
    folders = []
    for path in paths:
        if not os.path.isdir(path):
            raise UserError(f"{path} does not exist" if not os.path.exists(path) else f"{path} is not a folder")
        found = []
        for root, dirs, _ in os.walk(path):
            if is_run_folder(root):
                found.append(root)
                dirs.clear()  # a run folder holds no further runs
            else:
                dirs.sort()
        if not found:
            raise UserError(f"{path} holds no run folder (none with {', '.join(RUN_FILES)})")
        folders += sorted(found)
    return folders


def no_usable_run(problems, doing):
    """The UserError when every run folder given was skipped (`problems`: one line each): that line for one folder,
    else a count, each line logged first."""
    if len(problems) == 1:
        return UserError(problems[0])
    for problem in problems:
        log.warning("skipped %s", problem)
    return UserError(f"none of the {len(problems)} run folders {doing} (reasons above)")


# ---- grouping ------------------------------------------------------------------------------------------------------
@dataclass
class Group:
    """The finished runs of one protocol; `label` names it among the protocols of its table cell or row."""
    runs: List[Run]
    label: str = ""

    @property
    def flags(self):
        return self.runs[0].flags

    @property
    def teacher_id(self):
        return self.runs[0].teacher_id

    def summary(self):
        """(last mean, last std, best mean, best std); std is None for one run."""
        return mean_std([r.last_acc for r in self.runs]) + mean_std([r.best_acc for r in self.runs])


def mean_std(values):
    """Mean and sample standard deviation (n-1; None for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def group_by_protocol(runs):
    """One Group per protocol, in the order of the runs."""
    groups = {}
    for run in runs:
        groups.setdefault(run.protocol_key(), Group([])).runs.append(run)
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
    """One differing flag, as on the command line ("-a 0.9", "--kd_T 2", "--dot", "no --dot")."""
    from helper.recipes import flag_text as recipe_flag_text
    if key == "global_batch":
        return f"global batch {value}"
    if value is None:
        return f"--{key} unset"
    if value is False:
        return "no " + recipe_flag_text(key, True)
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return recipe_flag_text(key, value)


def label_groups(groups, identity, name):
    """Name each group by name(group) plus what tells it apart from the other groups of the same identity (a table
    cell or row): the flags whose values differ between them and, when the teacher files differ, the teacher."""
    by_identity = {}
    for group in groups:
        by_identity.setdefault(identity(group), []).append(group)
    for same in by_identity.values():
        keys = sorted(set().union(*(g.flags for g in same)))
        differing = [k for k in keys if len({json.dumps(g.flags.get(k), sort_keys=True) for g in same}) > 1]
        for group in same:
            parts = [flag_text(k, group.flags.get(k)) for k in differing]
            if len({g.teacher_id for g in same}) > 1:
                parts.append(f"teacher {short_teacher(group.teacher_id)}")
            group.label = f"{name(group)} ({' '.join(parts)})" if parts else name(group)
        labels = [g.label for g in same]
        for i, group in enumerate(same):
            if labels.count(group.label) > 1:  # values that print alike (2 and 2.0): never merge their cells
                group.label += f" [protocol {i + 1}]"


def short_teacher(teacher_id):
    """A teacher's sha256 prefix, or its file name for folders that recorded only the path."""
    if teacher_id is None:
        return "unknown"
    return teacher_id[:8] if len(teacher_id) == 64 else os.path.basename(teacher_id)


# ---- the tables ----------------------------------------------------------------------------------------------------
def method_order(label):
    """Columns in the order of helper.recipes (KD first), then by name."""
    from helper.recipes import RECIPES
    order = list(RECIPES)
    base = label.split(" ")[0].split("+")[0]
    return (order.index(base) if base in order else len(order), label)


def cell_text(group, paper=None):
    """`74.31 ± 0.22 / 74.58 ± 0.18 (n=3)`: last / best, mean ± sample std; plus the published number."""
    last, last_std, best, best_std = group.summary()
    text = f"{last:.2f} ± {fmt_std(last_std)} / {best:.2f} ± {fmt_std(best_std)} (n={len(group.runs)})"
    if paper is not None:  # the paper's method named when it is not the column's (CRD -a 1: "crd+kd")
        method = "" if paper.method == method_name(group.flags) else f" ({paper.method})"
        text += f" · paper{method} {paper.value:.2f}{'' if paper.source.verified else '?'}"
    return text


def fmt_std(std):
    return "-" if std is None else f"{std:.2f}"


HEADER = ("Top-1 test accuracy (%): `last / best (n)` = last-epoch and best-epoch top-1, each mean ± sample std "
          "(n-1; '-' for one run) over the n runs of one protocol (same teacher file and flags; seeds and trials "
          "differ).")
PAPER_NOTE = " `paper`: the published CIFAR-100 top-1 of that pair and method (sources at the end)."


def student_tables(groups, with_paper):
    """Markdown lines of one table per dataset: rows teacher -> student, columns methods; and the CSV rows."""
    label_groups(groups, lambda g: (g.flags.get("dataset"), pair_of(g), method_name(g.flags)),
                 lambda g: method_name(g.flags))
    lines, rows, sources = [], [], []
    for dataset in sorted({g.flags.get("dataset", "?") for g in groups}):
        in_table = [g for g in groups if g.flags.get("dataset", "?") == dataset]
        pairs = sorted({pair_of(g) for g in in_table})
        columns = sorted({g.label for g in in_table}, key=method_order)
        cells = {(pair_of(g), g.label): g for g in in_table}
        lines += [f"## Students on {dataset}", "",
                  "| teacher -> student | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for pair in pairs:
            texts = []
            for column in columns:
                group = cells.get((pair, column))
                paper = student_paper(group, dataset) if with_paper and group is not None else None
                if paper is not None and paper.source not in sources:
                    sources.append(paper.source)
                texts.append("" if group is None else cell_text(group, paper))
                if group is not None:
                    rows.append(csv_row("student", dataset, pair[0], pair[1], method_name(group.flags), column,
                                        group, paper))
            lines.append(f"| {pair[0]} -> {pair[1]} | " + " | ".join(texts) + " |")
        lines.append("")
    return lines, rows, sources


def pair_of(group):
    teacher = group.flags.get("model_t") or (group.runs[0].teacher or {}).get("arch") or "?"
    return teacher, group.flags.get("model_s", "?")


def student_paper(group, dataset):
    key = paper_key(group.flags)
    return paper_number(pair_of(group), key, PAPER) if dataset == PAPER_DATASET and key else None


TEACHER_KEYS = ("model", "dataset", "learning_rate", "weight_decay", "epochs")


def teacher_table(groups, with_paper):
    """Markdown lines of the table of teachers and vanilla students (train_teacher.py runs), and the CSV rows."""
    label_groups(groups, lambda g: json.dumps([g.flags.get(k) for k in TEACHER_KEYS]),
                 lambda g: g.flags.get("model", "?"))
    groups = sorted(groups, key=lambda g: [str(g.flags.get(k)) for k in ("dataset", "model")] + [g.label])
    head = "| model | dataset | lr | wd | epochs | last / best (n) |" + (" paper |" if with_paper else "")
    lines = ["## Teachers and vanilla students", "", head, "|---" * (6 + with_paper) + "|"]
    rows, sources = [], []
    for group in groups:
        paper = None
        if with_paper and group.flags.get("dataset") == PAPER_DATASET:
            paper = paper_number((group.flags.get("model"), ""), "vanilla", [PAPER_VANILLA])
        last, last_std, best, best_std = group.summary()
        cells = [group.label, *(str(group.flags.get(k, "?")) for k in TEACHER_KEYS[1:]),
                 f"{last:.2f} ± {fmt_std(last_std)} / {best:.2f} ± {fmt_std(best_std)} (n={len(group.runs)})"]
        if with_paper:
            cells.append("" if paper is None else f"{paper.value:.2f}")
            if paper is not None and paper.source not in sources:
                sources.append(paper.source)
        lines.append("| " + " | ".join(cells) + " |")
        rows.append(csv_row("teacher", group.flags.get("dataset", "?"), "", group.flags.get("model", "?"), "vanilla",
                            cells[0], group, paper))
    return lines + [""], rows, sources


CSV_FIELDS = ["kind", "dataset", "teacher", "model", "method", "label", "status", "n", "last_mean", "last_std",
              "best_mean", "best_std", "paper", "paper_method", "paper_verified", "folders", "reason"]


def csv_row(kind, dataset, teacher, model, method, label, group, paper):
    last, last_std, best, best_std = group.summary()
    return {"kind": kind, "dataset": dataset, "teacher": teacher, "model": model, "method": method, "label": label,
            "status": "finished", "n": len(group.runs), "last_mean": f"{last:.4f}", "last_std": csv_number(last_std),
            "best_mean": f"{best:.4f}", "best_std": csv_number(best_std),
            "paper": "" if paper is None else f"{paper.value:.2f}",
            "paper_method": "" if paper is None else paper.method,
            "paper_verified": "" if paper is None else str(paper.source.verified).lower(),
            "folders": ";".join(r.folder for r in group.runs), "reason": ""}


def csv_number(value):
    return "" if value is None else f"{value:.4f}"


def not_averaged_lines(runs):
    if not runs:
        return []
    return (["Not averaged (unfinished, failed or damaged):"] + [f"- {r.folder}: {r.status}: {r.reason}" for r in runs]
            + [""])


def not_averaged_row(run):
    if run.status == "damaged":  # nothing of its protocol was read
        return {"status": run.status, "n": 0, "folders": run.folder, "reason": run.reason}
    flags = run.flags
    return {"kind": "student" if run.is_student else "teacher", "dataset": flags.get("dataset", ""),
            "teacher": flags.get("model_t", "") if run.is_student else "",
            "model": flags.get("model_s" if run.is_student else "model", ""),
            "method": flags.get("distill", "") if run.is_student else "vanilla", "label": "", "status": run.status,
            "n": 0, "folders": run.folder, "reason": run.reason}


def build(paths, with_paper=False):
    """(Markdown text, CSV rows) for the run folders in or under `paths`."""
    runs = [read_run(folder) for folder in find_run_folders(paths)]
    if all(r.status == "damaged" for r in runs):
        raise no_usable_run([f"{r.folder}: {r.reason}" for r in runs], "can be read")
    finished = [r for r in runs if r.status == "finished"]
    skipped = [r for r in runs if r.status != "finished"]
    lines = [HEADER + (PAPER_NOTE if with_paper else ""), ""]
    rows, sources = [], []
    students = group_by_protocol([r for r in finished if r.is_student])
    teachers = group_by_protocol([r for r in finished if not r.is_student])
    tables = ([student_tables(students, with_paper)] if students else []) + \
        ([teacher_table(teachers, with_paper)] if teachers else [])
    for table_lines, table_rows, table_sources in tables:
        lines += table_lines
        rows += table_rows
        sources += [s for s in table_sources if s.source not in {known.source for known in sources}]
    if not finished:
        lines += ["No finished run.", ""]
    lines += not_averaged_lines(skipped)
    rows += [not_averaged_row(r) for r in skipped]
    if sources:
        lines += ["Published numbers (`paper`; '?' = not verified against the authors' own table):"]
        lines += [f"- {s.source}" + ("" if s.verified else " [?]") for s in sources] + [""]
    return "\n".join(lines).rstrip() + "\n", rows


def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, restval="")
        writer.writeheader()
        writer.writerows(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Markdown (stdout) and CSV tables of the runs in run folders.")
    parser.add_argument("folders", nargs="+", help="run folders, or folders holding them (save/student_model, "
                                                   "save/models)")
    parser.add_argument("--csv", default=None, help="CSV output (default: <first folder>/table.csv)")
    parser.add_argument("--paper", action="store_true", help="add the published CIFAR-100 top-1 where one exists")
    args = parser.parse_args(argv)
    text, rows = build(args.folders, args.paper)
    path = args.csv or os.path.join(args.folders[0], "table.csv")
    write_output(path, "--csv", lambda out: write_csv(rows, out))
    print(text + f"\nCSV: {path}")
    return text


if __name__ == "__main__":
    from helper.options import run_cli
    run_cli(main)
