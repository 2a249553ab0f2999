"""Student run folders named by what differs, the protocol of a student, and one run per (protocol, seed).

A student's protocol is the flags that change what it computes: the training flags every run has, the loss weights,
its method's own flags (`Distiller.add_args` plus `Distiller.reads`, with --kd_T when the KL term is on) and the flags
of the plug-ins it has on; another method's flags (an `--nce_k` on a KD line) are not part of it. Its folder is named
from the student, teacher, dataset, method (with the plug-ins' and variant's tags) and -r/-a/-b, then every protocol
flag whose value differs from the method's recipe for the pair and the flag defaults, then the trial:

    S=resnet8_T=resnet20_cifar100_kd_r=0.1_a=0.9_b=0_kd_T=8_lr=0.01_0

`--run_name NAME` replaces the name, `--tag TAG` appends `_TAG`, `--repdistiller_names` gives RepDistiller's
`S:resnet8_T:resnet20_cifar100_kd_r:0.1_a:0.9_b:0.0_0` (with ':' , which Windows and scp refuse). A folder with
that older name still resumes.
"""
import argparse
import functools
import hashlib
import json
import logging
import os
import re
from types import SimpleNamespace

from distiller_zoo.base import distiller_registry
from helper.engine.lr import parse_decay_epochs
from helper.errors import UserError
from helper.options import SLOW_LR_MODELS, seed_of_trial, student_parser
from helper.plugins import enabled_plugins, plugin_registry
from helper.recipes import recipe_flags
from helper.runs.protocol import NOT_PROTOCOL, experiment_flags
from helper.runs.records import DamagedFile, read_results

log = logging.getLogger("kd")
# Named in the fixed part of every name, or not by value (the trial and seed come last).
FIXED = frozenset({"model_s", "model_t", "dataset", "distill", "gamma", "alpha", "beta", "global_batch", "tag",
                   "seed"})
SHORT = {"gamma": "r", "alpha": "a", "beta": "b", "learning_rate": "lr", "weight_decay": "wd"}
MAX_NAME = 200  # bytes: file systems allow 255; room for suffixes such as `.tmp` files
UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")  # ':' breaks Windows and scp, '/' and ',' paths and shells


# ---- the protocol --------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def added_flags(add_args):
    """The dests a class's `add_args(parser)` adds."""
    parser = argparse.ArgumentParser(add_help=False)
    add_args(parser)
    return frozenset(a.dest for a in parser._actions)


def method_flags(cls):
    """The flags of a method's protocol besides the training flags: its own, those it reads, --init_epochs for an
    init stage."""
    return added_flags(cls.add_args) | cls.reads | ({"init_epochs"} if cls.needs.init_stage else frozenset())


@functools.lru_cache(maxsize=None)
def owned_flags():
    """Every flag that belongs to a method or a plug-in (part of a protocol only where that one is in use)."""
    owned = {"kd_T"}
    for cls in distiller_registry.values():
        owned |= method_flags(cls)
    for cls in plugin_registry.values():
        owned |= added_flags(cls.add_args)
    return frozenset(owned)


def protocol_flags(flags):
    """The recorded experiment flags of a student (results.json protocol.flags) less those of other methods and of
    plug-ins that are off; all of them for a method this code does not know."""
    cls = distiller_registry.get(flags.get("distill"))
    if cls is None:
        return dict(flags)
    keep = set(method_flags(cls))
    if flags.get("alpha"):
        keep.add("kd_T")  # the KL term's temperature
    for plugin in enabled_plugins(SimpleNamespace(**flags)):
        keep |= added_flags(plugin.add_args)
    owned = owned_flags()
    return {k: v for k, v in flags.items() if k not in owned or k in keep}


def protocol_key(flags, teacher_id):
    """What one (protocol, seed) comparison compares besides the seed: the protocol flags and the teacher file."""
    return json.dumps([protocol_flags(flags), teacher_id], sort_keys=True)


# ---- names ---------------------------------------------------------------------------------------------------------
def value_text(value):
    """A value in a folder name: 8, 0.0005, 150-180-210; characters outside [A-Za-z0-9._=+-] become '-'."""
    if isinstance(value, list):
        return "-".join(value_text(v) for v in value)
    if isinstance(value, float):
        value = f"{value:g}"
    return UNSAFE.sub("-", str(value))


def flag_token(dest, value):
    """`kd_T=8`, `lr=0.01`; a switch: `amp` when on, `no_amp` when off."""
    name = SHORT.get(dest, dest)
    if value is True:
        return name
    if value is False:
        return f"no_{name}"
    return f"{name}={value_text(value)}"


def same_value(a, b):
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and a == b)


@functools.lru_cache(maxsize=None)
def parser_defaults():
    """train_student.py's flag defaults by dest."""
    return {a.dest: a.default for a in student_parser()._actions if a.option_strings}


def baseline_flags(distill, teacher_arch, model_s):
    """What a student's flags are when nothing is given: the flag defaults, RepDistiller's lr for the student, and
    the method's recipe for the pair."""
    baseline = dict(parser_defaults())
    baseline["lr_decay_epochs"] = parse_decay_epochs(str(baseline.get("lr_decay_epochs", "")))
    baseline["learning_rate"] = 0.01 if model_s in SLOW_LR_MODELS else 0.05
    baseline.update(recipe_flags(distill, teacher_arch, model_s))
    return baseline


def differing_flags(flags, teacher_arch):
    """[(dest, value)] of a student's protocol flags (`flags`: recorded experiment flags, or experiment_flags(opt))
    that differ from its baseline_flags, in name order; the flags its tags already spell are left out."""
    cls = distiller_registry.get(flags.get("distill"))
    if cls is None:
        return []
    baseline = baseline_flags(flags["distill"], teacher_arch, flags.get("model_s"))
    tagged = set(cls.tag_flags)
    for plugin in enabled_plugins(SimpleNamespace(**flags)):
        tagged |= plugin.tag_flags
    relevant = protocol_flags(flags)
    return [(k, relevant[k]) for k in sorted(relevant)
            if k not in FIXED and k not in tagged and k in baseline and not same_value(relevant[k], baseline[k])]


def method_tags(opt):
    """The plug-ins' and the method variant's tags (`ctkd:global`, `grad:cos`)."""
    tags = [cls.tag(opt) for cls in enabled_plugins(opt)] + [distiller_registry[opt.distill].run_tag(opt)]
    return [t for t in tags if t]


def repdistiller_name(opt, teacher_arch):
    """RepDistiller's name (`S:..._T:..._<dataset>_<method>_r:..._a:..._b:..._<trial>`) with the tags before the
    trial: this repository's names before flags that differ were named."""
    tags = "".join(f"{t}_" for t in method_tags(opt))
    return (f"S:{opt.model_s}_T:{teacher_arch}_{opt.dataset}_{opt.distill}_"
            f"r:{opt.gamma}_a:{opt.alpha}_b:{opt.beta}_{tags}{opt.trial}")


def student_run_name(opt, teacher_arch):
    """The run folder's name (see the module's docstring)."""
    if getattr(opt, "run_name", None):
        return opt.run_name
    if getattr(opt, "repdistiller_names", False):
        name = repdistiller_name(opt, teacher_arch)
    else:
        head = [f"S={value_text(opt.model_s)}", f"T={value_text(teacher_arch)}", opt.dataset,
                "+".join([opt.distill] + [value_text(t.replace(":", "=")) for t in method_tags(opt)]),
                flag_token("gamma", opt.gamma), flag_token("alpha", opt.alpha), flag_token("beta", opt.beta)]
        differing = [flag_token(k, v) for k, v in differing_flags(experiment_flags(opt), teacher_arch)]
        if opt.seed != seed_of_trial(str(opt.trial)):  # a --seed other than the trial's
            differing.append(f"seed={opt.seed}")
        name = "_".join(head + differing + [str(opt.trial)])
        if len(name.encode()) > MAX_NAME:  # keep the head and trial, shorten the flags into a hash
            digest = hashlib.sha256("_".join(differing).encode()).hexdigest()[:10]
            name = "_".join(head + [f"flags={digest}", str(opt.trial)])
    tag = getattr(opt, "tag", None)
    return f"{name}_{tag}" if tag else name


def student_folders(opt, teacher_arch):
    """(run folder, TensorBoard folder) of a student. A bare --resume whose folder does not exist continues this run
    where it was started (said in the log): the folder of the same student, teacher file, dataset, method, trial and
    tag whose other flags differ at most in --epochs or --batch_size (the flags a resume may change), or under
    RepDistiller's name; when just one such folder exists with other flags, that one, so that the resume names the
    flag that differs."""
    name = student_run_name(opt, teacher_arch)
    if opt.resume == "last" and not os.path.isdir(os.path.join(opt.model_path, name)) and not opt.run_name:
        found = earlier_folder(opt, name)
        if found is not None:
            log.info("--resume: no folder %s; continuing this run in %s", name, found)
            name = found
    return os.path.join(opt.model_path, name), os.path.join(opt.tb_path, name)


RESUMABLE_CHANGES = frozenset({"epochs", "batch_size", "global_batch"})  # what a resume may change
IDENTITY = ("model_s", "model_t", "dataset", "distill", "trial", "tag")


def earlier_folder(opt, name):
    """The folder name of this run started under other flags (see student_folders), or None."""
    same_student, same_run = [], []
    now = resumable_flags(experiment_flags(opt))
    for entry in sorted(os.listdir(opt.model_path)) if os.path.isdir(opt.model_path) else []:
        options = recorded_options(os.path.join(opt.model_path, entry))
        if options is None or any(options.get(k) != getattr(opt, k, None) for k in IDENTITY):
            continue
        same_student.append(entry)
        if resumable_flags({k: v for k, v in options.items() if k not in NOT_PROTOCOL}) == now:
            same_run.append(entry)
    if len(same_run) == 1:
        return same_run[0]
    if len(same_student) == 1:
        return same_student[0]
    if len(same_student) > 1:
        raise UserError(f"--resume: no run folder {name}; this student has runs with other flags in "
                        f"{', '.join(same_student)}: resume one of them with the flags it was trained with")
    return None


def resumable_flags(flags):
    """A run's protocol flags less those a resume may change, as JSON text."""
    return json.dumps({k: v for k, v in protocol_flags(flags).items() if k not in RESUMABLE_CHANGES}, sort_keys=True)


def recorded_options(folder):
    """A run folder's options.json as a dict, None when it has none (or it cannot be read)."""
    try:
        with open(os.path.join(folder, "options.json"), encoding="utf-8") as f:
            options = json.load(f)
    except (OSError, ValueError):
        return None
    return options if isinstance(options, dict) else None


# ---- one run per (protocol, seed) ----------------------------------------------------------------------------------
def finished_runs(model_path):
    """{protocol key: [(seed, folder)]} of the finished students under `model_path` (one level, as runs are written);
    folders that cannot be read are left to helper.table to report."""
    found = {}
    if not os.path.isdir(model_path):
        return found
    for entry in sorted(os.listdir(model_path)):
        folder = os.path.join(model_path, entry)
        try:
            results = read_results(folder) if os.path.isdir(folder) else None
        except DamagedFile:
            continue
        protocol = (results or {}).get("protocol")
        if not protocol or results.get("status") == "failed" or "distill" not in (protocol.get("flags") or {}):
            continue
        teacher = protocol.get("teacher") or {}
        key = protocol_key(protocol["flags"], teacher.get("sha256") or teacher.get("path"))
        found.setdefault(key, []).append((protocol.get("seed"), folder))
    return found


def check_new_protocol_seed(runs, folders, teacher_sha256):
    """Refuse a student whose (protocol, seed) a finished run in another folder, or another student of this command,
    already has: it would train the same thing twice, and a table would count it twice."""
    seen = {}
    finished = {}
    for run, folder in zip(runs, folders):
        path = run.opt.model_path
        if path not in finished:
            finished[path] = finished_runs(path)
        key = protocol_key(experiment_flags(run.opt), teacher_sha256)
        for seed, other in finished[path].get(key, []):
            if seed == run.opt.seed and os.path.abspath(other) != os.path.abspath(folder):
                raise UserError(f"{run.source}: {other} already holds a finished run of this protocol with seed "
                                f"{seed}; a second one would train the same thing. Give another --seed (or "
                                "--trial), or delete that folder")
        if (key, run.opt.seed) in seen:
            raise UserError(f"{seen[key, run.opt.seed].source} and {run.source} are the same protocol with the same "
                            f"seed {run.opt.seed}; give one of them another --seed or --trial")
        seen[key, run.opt.seed] = run


def check_distinct_folders(runs, folders):
    seen = {}
    for run, folder in zip(runs, folders):
        if folder in seen:
            raise UserError(f"{seen[folder].source} and {run.source} would write to the same run folder "
                            f"{os.path.basename(folder)}; give one of them another --trial or a --tag")
        seen[folder] = run
