"""`python -m helper.plot FOLDER... [--out FILE]`: the training curves of runs as one PNG, one curve per protocol:
the mean over its seeds with a ± sample std band (drawn by helper.runs.curves, which a run's --plot uses too).

FOLDERs are what helper.table takes: roots (save/student_model save/models), run folders, helper.launch folders;
files among them (a table.csv) are skipped, and a folder that holds no run is an error. Runs are grouped and labelled
as helper.table groups and labels them: a legend entry is the table's column label (`kd`, `crd (-a 1 --nce_k
1024)`), after the dataset and the pair where the figure holds several; train_teacher.py runs are `vanilla <model>`.
What the curves share (the dataset, the pair, the students' "All runs" flags of the table) is the figure's title. A
run whose protocol and seed a run already drawn has is counted once; a failed run is drawn alone (`[failed:
<folder>]`); a run still going is averaged with its protocol over the epochs it logged; a folder whose flags cannot
be read is drawn alone under its name.
"""
import argparse
import logging
import os

from helper.errors import UserError
from helper.runs.curves import Protocol, draw_protocols, read_curves, save_figure
from helper.runs.records import no_usable_run
from helper.tools.table import (
    find_run_folders,
    flag_text,
    group_by_protocol,
    is_run_folder,
    label_students,
    label_teachers,
    method_order,
    read_run,
    split_same_labels,
)

log = logging.getLogger("kd")


def read_plotted(paths):
    """[(Run, epoch records)] of the run folders in or under `paths` that logged an epoch; the others are skipped
    with one line each, and a UserError when none is left."""
    plotted, problems = [], []
    for folder in find_run_folders(paths):
        try:
            records = read_curves(folder)
        except UserError as e:
            problems.append(str(e))
            continue
        plotted.append((read_run(folder, strict_log=False), records))
    if not plotted:
        raise no_usable_run(problems, "can be plotted")
    for problem in problems:
        log.warning("skipped %s", problem)
    return plotted


def protocol_curves(paths):
    """(the figure's title, [Protocol]) of the runs in or under `paths` (see the module's docstring)."""
    plotted = read_plotted(paths)
    records = {run.folder: recs for run, recs in plotted}
    runs = sorted((run for run, _ in plotted), key=lambda r: r.status == "failed")  # a seed's good run is kept
    known = [r for r in runs if r.flags and r.status != "damaged"]
    students = group_by_protocol([r for r in known if r.is_student])
    teachers = group_by_protocol([r for r in known if not r.is_student])
    common = label_students(students)
    label_teachers(teachers)
    split_same_labels(teachers, lambda g: g.dataset)  # one figure: every protocol of a model told apart
    students.sort(key=lambda g: (g.dataset, g.pair, method_order(g.label)))
    many_datasets = len({g.dataset for g in students + teachers}) > 1
    many_pairs = len({g.pair for g in students}) > 1
    protocols = []
    for group in students + teachers:
        label = legend_label(group, many_datasets, many_pairs)
        for run, kept in group.duplicates:
            log.info("%s: counted once (the same protocol and seed as %s)", run.folder, kept.folder)
        drawn = [(r.folder, records[r.folder]) for r in group.runs if r.status != "failed"]
        protocols += [Protocol(label, drawn)] if drawn else []
        protocols += [Protocol(f"{label} [failed: {os.path.basename(r.folder)}]", [(r.folder, records[r.folder])])
                      for r in group.runs if r.status == "failed"]
    protocols += [Protocol(os.path.basename(os.path.normpath(r.folder)), [(r.folder, records[r.folder])])
                  for r in runs if not any(r is k for k in known)]
    return figure_title(students, teachers, common), protocols


def legend_label(group, many_datasets, many_pairs):
    """The table's label of a protocol, after its dataset and pair where the figure holds several."""
    dataset = f"{group.dataset}, " if many_datasets else ""
    if not group.runs[0].is_student:
        return f"{dataset}vanilla {group.label}"
    return dataset + (f"{group.pair[0]} -> {group.pair[1]}: " if many_pairs else "") + group.label


def figure_title(students, teachers, common):
    """What every curve shares: the dataset, the pair, the flags every student shares (the table's "All runs"), and
    what the band is."""
    datasets = sorted({g.dataset for g in students + teachers})
    pairs = sorted({g.pair for g in students})
    parts = datasets[:1] if len(datasets) == 1 else []
    parts += [f"{pairs[0][0]} -> {pairs[0][1]}"] if len(pairs) == 1 else []
    for dataset, flags in sorted(common.items()):
        if flags:
            where = "" if len(datasets) == 1 else f"{dataset}: "
            parts.append(f"{where}all students: {' '.join(flag_text(k, v) for k, v in flags)}")
    return "; ".join(parts + ["lines: mean over seeds, bands: ± sample std"])


def default_out(folders):
    """A lone run folder's curves.png (as its --plot writes), else curves.png here."""
    if len(folders) == 1 and os.path.isdir(folders[0]) and is_run_folder(folders[0]):
        return os.path.join(folders[0], "curves.png")
    return "curves.png"


def main(argv=None):
    parser = argparse.ArgumentParser(description="Plot the training curves of runs into one PNG: per protocol, the "
                                                 "mean over its seeds with a ± std band.")
    parser.add_argument("folders", nargs="+", help="what helper.table takes: run folders, folders holding them "
                                                   "(save/student_model, save/models) or helper.launch folders; files "
                                                   "are skipped")
    parser.add_argument("--out", default=None, help="PNG to write (default: RUN/curves.png for one run folder, "
                                                    "curves.png here otherwise)")
    args = parser.parse_args(argv)
    title, protocols = protocol_curves(args.folders)
    out = save_figure(draw_protocols(protocols, title), args.out or default_out(args.folders))
    print(out)
    return out


if __name__ == "__main__":
    from helper.options import run_cli
    run_cli(main)
