"""The run's record files, one reader and one writer each: log.jsonl (epoch scalars), results.json (how the run
ended) and options.json (its flags). A file that is there but cannot be used is a DamagedFile naming it."""
import json
import logging
import math
import os
from typing import List, NamedTuple

from helper.errors import UserError
from helper.runs.files import write_text_atomic
from helper.util import is_integer

log = logging.getLogger("kd")
RECORD_FILES = ("log.jsonl", "results.json", "options.json")  # what a run records besides checkpoints and logs


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


def no_usable_run(problems, doing):
    """The UserError when every run folder given was skipped (`problems`: one line each): that line for one folder,
    else a count, each line logged first."""
    if len(problems) == 1:
        return UserError(problems[0])
    for problem in problems:
        log.warning("skipped %s", problem)
    return UserError(f"none of the {len(problems)} run folders {doing} (reasons above)")


def truncate_log(folder, last_epoch):
    """Keep the init-stage records and the epoch records up to `last_epoch` in <folder>/log.jsonl."""
    path = os.path.join(folder, "log.jsonl")
    if not os.path.isfile(path):
        return
    kept, damaged = [], 0
    with open(path, errors="replace") as f:  # a byte that is not UTF-8 makes its line unreadable, not the file
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                damaged += bool(line.endswith("\n"))  # a last line cut by a kill is no damage
                continue
            if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
                damaged += 1
            elif record.get("kind") != "epoch" or record.get("step", 0) <= last_epoch:
                kept.append(json.dumps(record))
    if damaged:
        log.warning("%s: dropped %d damaged line(s) while resuming", path, damaged)
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def write_results(folder, results):
    """<folder>/results.json: how the run ended (status, accuracies, epochs, protocol), atomically."""
    write_text_atomic(os.path.join(folder, "results.json"), json.dumps(results, indent=2))


def write_options(folder, options):
    """<folder>/options.json: every flag of the run, as plain types."""
    write_text_atomic(os.path.join(folder, "options.json"), json.dumps(options, indent=2, sort_keys=True))
