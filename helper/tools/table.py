"""Tables of results from run folders: `python -m helper.table save/student_model [save/models] [--csv PATH] [--paper]`.

Every run folder under the given folders is read (results.json; options.json for folders written before results.json
recorded a protocol). Finished runs are grouped by protocol: the teacher file (sha256, else path) and every
experiment flag (helper.protocol: seed and trial excluded), so runs are never averaged across protocols. Students:
rows are teacher -> student pairs, columns methods, one table per dataset; teachers (and vanilla students, both from
train_teacher.py): one row per model and protocol. Cells: mean ± sample std (n-1) of the last-epoch and of the best
top-1 over the runs of one protocol. Unfinished and failed runs are listed under the tables, never averaged, and so
are damaged or foreign folders (a run file that is not UTF-8 JSON of the shape helper.runs writes), with the
reason; only when every folder is damaged is it an error. The same figures go to a CSV file. `--paper` adds the
published CIFAR-100 numbers of PAPER (below), with their sources.
"""
import argparse
import csv
import json
import logging
import os
import statistics
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import List, Optional

from helper.errors import UserError
from helper.runs.files import write_output
from helper.runs.protocol import NOT_PROTOCOL
from helper.runs.records import (
    OPTIONS_FIELDS,
    RECORD_FILES,
    DamagedFile,
    no_usable_run,
    read_json,
    read_log,
    read_results,
)
from helper.tools.launch import MANIFEST, read_manifest
from helper.tools.published import PAPER, PAPER_DATASET, PAPER_VANILLA, paper_number
from helper.util import flag_text as option_text

log = logging.getLogger("kd")


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
    return any(os.path.isfile(os.path.join(path, name)) for name in RECORD_FILES)


def find_run_folders(paths):
    """Every run folder in or under `paths` (a path may itself be a run folder, or a helper.launch folder: its
    jobs' run folders); one-line errors for a path that does not exist or holds no run."""
    folders = []
    for path in paths:
        if not os.path.isdir(path):
            raise UserError(f"{path} does not exist" if not os.path.exists(path) else f"{path} is not a folder")
        if os.path.isfile(os.path.join(path, MANIFEST)):  # a launch folder: the run folders of its jobs
            folders += [f for job in read_manifest(path)["jobs"] for f in job["folders"] if os.path.isdir(f)]
            continue
        found = []
        for root, dirs, _ in os.walk(path):
            if is_run_folder(root):
                found.append(root)
                dirs.clear()  # a run folder holds no further runs
            else:
                dirs.sort()
        if not found:
            raise UserError(f"{path} holds no run folder (none with {', '.join(RECORD_FILES)})")
        folders += sorted(found)
    return folders


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
    return f"global batch {value}" if key == "global_batch" else option_text(key, value)


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
