"""The flags of train_teacher.py and train_student.py (RepDistiller's names and defaults), checked and resolved
once; `--from_run RUN_FOLDER` replays a recorded run's flags; `run_cli` turns user mistakes into one line."""
import argparse
import errno
import logging
import math
import os
import re
import shlex
import sys
import zlib

import distiller_zoo  # noqa: F401  registers every method
from crd.memory import MEMORY_DTYPES
from distiller_zoo.base import distiller_registry, get_distiller_class
from helper.engine import distributed, fast
from helper.engine.lr import parse_decay_epochs
from helper.errors import Interrupted, NonFiniteLossError, Preempted, UserError
from helper.plugins import add_plugin_args
from helper.runs.logger import setup_console_logging
from helper.runs.records import DamagedFile, read_json
from helper.student.teacher import parse_teacher_input
from helper.util import resolve_device
from models import check_model_name

log = logging.getLogger("kd")
SLOW_LR_MODELS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")  # RepDistiller trains these with lr 0.01
MAX_SEED = 2 ** 32 - 1  # numpy's legacy seed range is 0..2**32-1


def add_training_args(parser):
    """Optimisation, data and bookkeeping flags common to teachers and students."""
    p = parser
    p.add_argument("--print_freq", type=int, default=100, help="iterations between progress updates (100)")
    p.add_argument("--tb_freq", type=int, default=500, help="kept for RepDistiller compatibility; logs are per epoch")
    p.add_argument("--save_freq", type=int, default=40, help="write ckpt_epoch_<N>.pth every N epochs (40)")
    p.add_argument("--batch_size", type=int, default=64, help="batch size per process (64); under torchrun the global batch is nproc_per_node x this")
    p.add_argument("--num_workers", type=int, default=8, help="data loader worker processes (8)")
    p.add_argument("--epochs", type=int, default=240, help="number of training epochs (240)")
    p.add_argument("--learning_rate", type=float, default=None,
                   help="base learning rate (0.05; 0.01 for MobileNetV2/ShuffleV1/ShuffleV2 as in RepDistiller)")
    p.add_argument("--lr_decay_epochs", type=str, default="150,180,210",
                   help="epochs after which lr is multiplied by --lr_decay_rate ('150,180,210')")
    p.add_argument("--lr_decay_rate", type=float, default=0.1, help="step decay factor (0.1)")
    p.add_argument("--lr_schedule", choices=["step", "cosine"], default="step", help="lr schedule (step)")
    p.add_argument("--weight_decay", type=float, default=5e-4, help="SGD weight decay (5e-4)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (0.9)")
    p.add_argument("--dataset", type=str, default="cifar100", help="cifar100 | fashion_mnist | imagenet (cifar100)")
    p.add_argument("--data_root", type=str, default="./data", help="folder holding the datasets (./data)")
    p.add_argument("--subset", type=int, default=0,
                   help="train on N class-balanced training samples only, for smoke tests; the test set stays whole "
                        "unless --test_subset (0 = all)")
    p.add_argument("--test_subset", type=int, default=0,
                   help="evaluate on N class-balanced test samples only (0 = the whole test set)")
    p.add_argument("--loader", type=str, default="auto", choices=["auto", "device", "torch"],
                   help="device: the dataset lives on the training device and is augmented there (cifar100, "
                        "fashion_mnist; the default with auto); torch: torch's DataLoader with worker processes "
                        "(imagenet's default with auto)")
    p.add_argument("--gpu_loader", action="store_true", help="the old spelling of --loader device")
    p.add_argument("-t", "--trial", type=str, default="0",
                   help="trial id, part of the run folder name; without --seed it also seeds the run: a number seeds "
                        "with itself, a name (e.g. 'a') with a stable hash of it (CRC32) (0)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed (initial weights, data order, augmentation, negatives); epoch e of the data is "
                        "seeded with seed + e (default: the --trial number)")
    p.add_argument("--plot", action="store_true",
                   help="at the end, draw the run's curves into <run folder>/curves.png (helper.plot)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run's files in this run's folder and start over (else refused)")
    p.add_argument("--device", type=str, default="auto", help="cpu, cuda, cuda:N or auto (auto)")
    p.add_argument("--resume", type=str, nargs="?", const="last", default=None,
                   help="resume from a checkpoint path, or from this run's last checkpoint if no path is given")
    p.add_argument("--allow_batch_change", action="store_true",
                   help="let --resume continue with a global batch (processes x --batch_size) other than the checkpoint's")
    p.add_argument("--no_progress", action="store_true", default=None, help="hide progress bars")
    p.add_argument("--from_run", type=str, default=None,
                   help="replay the run recorded in this run folder (its options.json): its flags, then the ones "
                        "given here, which win; give another --trial (or --model_path) for a new folder")
    return p


# Recorded flags a replay leaves out: how that process ran or what it did to its folder, not what it trained.
NOT_REPLAYED = frozenset({"from_run", "resume", "overwrite", "plan", "dry_run", "device", "no_progress",
                          "allow_batch_change"})


def replayed_argv(parser, argv):
    """`argv` with, in front, the flags that the options.json of `--from_run RUN_FOLDER` records (so that the
    flags given explicitly, later, win); `argv` itself without --from_run. One line when a recorded value no longer
    parses."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--from_run", default=None)
    folder = probe.parse_known_args(list(argv))[0].from_run
    if folder is None:
        return list(argv)
    return recorded_flags(parser, folder) + list(argv)


def recorded_flags(parser, folder):
    """The command-line flags of the run recorded in `folder`/options.json, each checked against this parser."""
    path = os.path.join(folder, "options.json")
    if not os.path.isfile(path):
        raise UserError(f"--from_run {folder}: no options.json there; give a run folder written by train_teacher.py "
                        "or train_student.py")
    try:
        options = read_json(path, {})
    except DamagedFile as e:
        raise UserError(f"--from_run {folder}: {e}") from None
    tokens = []
    implied_seed = options.get("seed") == seed_of_trial(str(options.get("trial", "0")))
    for action in parser._actions:
        if not action.option_strings or action.dest in NOT_REPLAYED or options.get(action.dest) is None:
            continue
        if action.dest == "seed" and implied_seed:  # the trial's own seed: another --trial brings its own
            continue
        tokens += recorded_tokens(action, options[action.dest], folder)
    return tokens


def recorded_tokens(action, value, folder):
    """[flag, value] (or [flag] for a switch that was on) of one recorded option, checked as the parser would."""
    flag = max(action.option_strings, key=len)
    if action.nargs == 0:
        if not isinstance(value, bool):
            raise UserError(f"--from_run {folder}: options.json records {flag} {value!r}, not true/false; pass "
                            f"{flag} explicitly or replay another run")
        return [flag] if value and value != action.default else []
    several = action.nargs not in (None, "?")  # a flag taking a list of values
    if several and not isinstance(value, list):
        value = [value]
    if not several and isinstance(value, list):  # a list recorded as parsed, e.g. --lr_decay_epochs 150,180,210
        value = ",".join(str(v) for v in value)
    texts = [str(v) for v in value] if several else [str(value)]
    for text in texts:
        try:
            converted = action.type(text) if action.type else text
        except (TypeError, ValueError):
            converted = None
        if converted is None or (action.choices is not None and converted not in action.choices):
            raise UserError(f"--from_run {folder}: options.json records {flag} {' '.join(texts)}, which this version "
                            f"no longer accepts; pass {flag} explicitly to replace it")
    return [flag, *texts] if texts or action.nargs == "*" else []


def explicit_dests(parser, argv):
    """The option names (dests) given explicitly in argv, whatever their values."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            kwargs = {"dest": action.dest, "default": argparse.SUPPRESS}
            if action.nargs == 0:
                kwargs["action"] = "store_const"
                kwargs["const"] = action.const if action.const is not None else True
            else:
                kwargs["nargs"] = action.nargs
            probe.add_argument(*action.option_strings, **kwargs)
    found, _ = probe.parse_known_args(list(argv or []))
    return set(vars(found))


def seed_of_trial(trial):
    """The seed a trial implies when --seed is not given: the trial's number, or a stable hash of its name."""
    return int(trial) if trial.isdigit() else zlib.crc32(trial.encode())


def check_finite(opt, name, low=None, strict=False):
    value = getattr(opt, name)
    if value is None:
        return
    bad = not math.isfinite(value) or (low is not None and (value <= low if strict else value < low))
    if bad:
        bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
        raise UserError(f"--{name} must be a finite number{bound}, got {value}")


def check_decay_epochs(opt):
    """--lr_decay_epochs as a list of positive epochs (1-based)."""
    epochs = parse_decay_epochs(opt.lr_decay_epochs)
    if any(e <= 0 for e in epochs):
        raise UserError(f"--lr_decay_epochs must list positive epochs (1-based), got {opt.lr_decay_epochs!r}")
    return epochs


def finish_seed(opt):
    """--seed, or the seed of --trial, checked against the range every RNG it feeds accepts (numpy's is the
    narrowest: 0..2**32-1; python's random and torch take any of those)."""
    given = opt.seed is not None
    if not given:
        opt.seed = seed_of_trial(str(opt.trial))
    if not 0 <= opt.seed <= MAX_SEED:
        source = f"--seed {opt.seed} is" if given else f"--trial {opt.trial} implies seed {opt.seed},"
        raise UserError(f"{source} outside 0..{MAX_SEED}, the range that numpy's, python's and torch's random "
                        "generators all accept; pass a --seed in that range")


def check_plain_name(opt, flag):
    """A flag that becomes (part of) a folder name: letters, digits, '.', '_', '-', '=', '+' only."""
    value = getattr(opt, flag)
    if value is not None and (not re.fullmatch(r"[A-Za-z0-9._=+-]{1,100}", value) or value in (".", "..")):
        raise UserError(f"--{flag} {value!r} must be a plain name of at most 100 characters (letters, digits, '.', "
                        "'_', '-', '=', '+'): it is part of the run folder's name")


def finish_training_args(opt):
    """Validate and derive fields shared by both scripts (device, decay epochs, seed)."""
    opt.lr_decay_epochs = check_decay_epochs(opt)
    for name in ("batch_size", "epochs", "save_freq", "print_freq"):
        if getattr(opt, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(opt, name)}")
    if opt.num_workers < 0:
        raise UserError(f"--num_workers must be >= 0, got {opt.num_workers}")
    check_finite(opt, "learning_rate", 0, strict=True)
    for name in ("momentum", "weight_decay", "lr_decay_rate"):
        check_finite(opt, name, 0)
    for name in ("subset", "test_subset"):
        if getattr(opt, name) < 0:
            raise UserError(f"--{name} must be >= 0 (0 keeps every sample), got {getattr(opt, name)}")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", str(opt.trial)) or str(opt.trial) in (".", ".."):
        raise UserError(f"--trial {opt.trial!r} must be a plain name (letters, digits, '.', '_', '-'): it is part of "
                        "the run folder's name")
    finish_seed(opt)
    if opt.resume and opt.overwrite:
        raise UserError("--resume continues the run in its folder and --overwrite deletes it: give one of the two")
    opt.distributed, opt.rank, opt.world_size = False, 0, 1  # helper.engine.distributed.setup sets them under torchrun
    if opt.no_progress is None:
        opt.no_progress = not sys.stderr.isatty() or None
    opt.device = resolve_device(opt.device)
    return opt


def apply_default_lr(opt, model_name, logger=log):
    """Fill an unset --learning_rate: 0.05, or 0.01 for MobileNetV2/ShuffleV1/ShuffleV2 (RepDistiller), said when applied."""
    if opt.learning_rate is not None:
        return
    opt.learning_rate = 0.05
    if model_name in SLOW_LR_MODELS:
        opt.learning_rate = 0.01
        logger.info("learning rate set to 0.01 for %s (RepDistiller's setting for this network)", model_name)


def teacher_parser():
    parser = argparse.ArgumentParser(description="Train a teacher network (cross-entropy only).")
    add_training_args(parser)
    parser.add_argument("--model", type=str, default="resnet110", help="network name from models.model_dict (resnet110)")
    parser.add_argument("--model_path", type=str, default="./save/models", help="where run folders go (./save/models)")
    parser.add_argument("--tb_path", type=str, default="./save/tensorboard", help="where TensorBoard logs go")
    fast.add_fast_args(parser)
    return parser


def finish_teacher_options(opt):
    """A teacher run's options, checked, with its run folders (RepDistiller's names)."""
    check_model_name(opt.model, "--model")
    apply_default_lr(opt, opt.model)
    finish_training_args(opt)
    fast.check_fast_args(opt)
    opt.model_name = f"{opt.model}_{opt.dataset}_lr_{opt.learning_rate}_decay_{opt.weight_decay}_trial_{opt.trial}"
    opt.save_folder = os.path.join(opt.model_path, opt.model_name)
    opt.tb_folder = os.path.join(opt.tb_path, opt.model_name)
    return opt


def parse_teacher_options(argv=None):
    """The options of a teacher run from its command line (with the flags of --from_run in front)."""
    parser = teacher_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    return finish_teacher_options(parser.parse_args(replayed_argv(parser, argv)))


def student_parser(shown_methods=None):
    """train_student.py's parser; `shown_methods`: only these methods' own flags (for -h), else every method's."""
    parser = argparse.ArgumentParser(
        description="Distil a student network from a trained teacher.",
        epilog=None if shown_methods is None else "Each method's own flags: train_student.py --distill NAME -h "
        f"(shown here: {', '.join(shown_methods) or 'none'}).")
    add_training_args(parser)
    p = parser.add_argument_group("distillation")
    p.add_argument("--path_t", "--path-t", dest="path_t", type=str, default=None, help="teacher checkpoint ({'model': state_dict} file)")
    p.add_argument("--model_t", type=str, default=None,
                   help="the teacher's network, where --path_t's checkpoint and folder do not say (a model name, "
                        "torchvision:<name> or timm:<name>); refused when it contradicts the checkpoint")
    p.add_argument("--teacher_input", type=str, default="auto",
                   help="what the teacher sees: auto (its checkpoint's input_size/mean/std; else, for a torchvision/timm "
                        "file without 'arch', the library's pretrained configuration; else the batches as they are), "
                        "dataset (the batches as they are) or a side in px; batches are un-normalised, resized and "
                        "re-normalised for it when that differs from the dataset (auto)")
    p.add_argument("--model_s", type=str, default="resnet8",
                   help="student network name (resnet8); a comma-separated list trains one student per name")
    p.add_argument("--distill", type=str, default="kd",
                   help="method (kd): " + ", ".join(sorted(distiller_registry)) + "; a comma-separated list trains "
                        "one student per method in one process, sharing the teacher's forward pass")
    p.add_argument("--plan", type=str, default=None,
                   help="a file with one line of flags per student (as the lines of scripts/run_cifar_distill.sh), "
                        "appended to this command line's; the students share one process and one teacher pass")
    p.add_argument("-r", "--gamma", type=float, default=None, help="weight of the classification loss (recipe)")
    p.add_argument("-a", "--alpha", type=float, default=None, help="weight of the KL divergence to the teacher (recipe)")
    p.add_argument("-b", "--beta", type=float, default=None, help="weight of the method's own loss terms (recipe)")
    p.add_argument("--no_recipe", action="store_true",
                   help="do not fill unset flags from the method's published recipe (helper/recipes.py)")
    p.add_argument("--kd_T", type=float, default=4, help="temperature of the KL term (4)")
    p.add_argument("--feat_dim", type=int, default=128, help="embedding dimension of CRD/CC (128)")
    p.add_argument("--mode", type=str, default="exact", choices=["exact", "relax"], help="CRD positive mode (exact)")
    p.add_argument("--nce_k", type=int, default=16384, help="CRD negatives per sample (16384)")
    p.add_argument("--nce_t", type=float, default=0.07, help="CRD temperature (0.07)")
    p.add_argument("--nce_m", type=float, default=0.5, help="CRD memory momentum (0.5)")
    p.add_argument("--memory_dtype", type=str, default="float32", choices=list(MEMORY_DTYPES),
                   help="storage of CRD/CRCD memory banks; bfloat16 halves them, scores stay float32 (float32)")
    p.add_argument("--percent", type=float, default=1.0, help="fraction of each class's negatives CRD draws from (1.0)")
    p.add_argument("--hint_layer", type=int, default=2, choices=[0, 1, 2, 3, 4], help="FitNet feature index (2)")
    p.add_argument("--init_epochs", type=int, default=30, help="init-stage epochs of abound/factor/fsp (30)")
    p.add_argument("--model_path", type=str, default="./save/student_model",
                   help="where run folders go (./save/student_model)")
    p.add_argument("--tb_path", type=str, default="./save/student_tensorboards",
                   help="TensorBoard logs (./save/student_tensorboards)")
    p.add_argument("--dry_run", action="store_true",
                   help="build data, models and method, check the run folders, run no step, exit")
    p.add_argument("--analyze", action="store_true",
                   help="at the end, run helper.analyze on each student of the command (analysis.json and its figures "
                        "in the run folder: fidelity to the teacher, calibration, CKA, t-SNE)")
    p.add_argument("--run_name", type=str, default=None,
                   help="the run folder's name, instead of the one made from the flags that differ (helper/naming.py)")
    p.add_argument("--tag", type=str, default=None,
                   help="appended to the run folder's name (_TAG); part of the protocol: tables keep tagged runs apart")
    p.add_argument("--repdistiller_names", action="store_true",
                   help="RepDistiller's folder names (S:<s>_T:<t>_<dataset>_<method>_r:<r>_a:<a>_b:<b>_<trial>), "
                        "for scripts that depend on them; ':' is not valid on Windows and confuses scp")
    add_plugin_args(parser)
    fast.add_fast_args(parser)
    for name in sorted(distiller_registry):
        if shown_methods is None or name in shown_methods:
            distiller_registry[name].add_args(parser.add_argument_group(f"--distill {name}"))
    return parser


def help_methods(argv):
    """For `-h`: the known methods of --distill (kd by default), whose flags the help shows; None without -h."""
    argv = list(argv or [])
    if "-h" not in argv and "--help" not in argv:
        return None
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--distill", default="kd")
    names = probe.parse_known_args(argv)[0].distill.split(",")
    return [n.strip() for n in names if n.strip() in distiller_registry]


def one_line_errors(parser):
    """The parser, raising UserError instead of printing its usage and exiting."""
    def error(message):
        raise UserError(message)
    parser.error = error
    return parser


def finish_student_options(opt):
    if opt.path_t is None:
        raise UserError("--path_t is required: the teacher checkpoint to distil from")
    if "," not in opt.distill:
        get_distiller_class(opt.distill)
    for name in opt.model_s.split(","):
        check_model_name(name, "--model_s")
    if opt.model_t is not None:
        check_model_name(opt.model_t, "--model_t")
    parse_teacher_input(opt.teacher_input)
    for name in opt.distill.split(","):
        get_distiller_class(name)
    if "," not in opt.model_s:
        apply_default_lr(opt, opt.model_s)
    for flag in ("kd_T", "nce_t"):
        value = getattr(opt, flag)
        if not value > 0 or value == float("inf"):
            raise UserError(f"--{flag} must be a positive number, got {value}")
    for flag in ("gamma", "alpha", "beta"):  # -r, -a, -b; unset ones come from the recipe
        check_finite(opt, flag, 0)
    if opt.init_epochs < 0:
        raise UserError(f"--init_epochs must be >= 0, got {opt.init_epochs}")
    for flag in ("run_name", "tag"):
        check_plain_name(opt, flag)
    if opt.run_name and "," in opt.model_s + opt.distill:
        raise UserError("--run_name names one run folder, but --model_s/--distill list several students; use --tag, "
                        "or give each student its own --run_name in a --plan line")
    if not 0 < opt.percent <= 1:
        raise UserError(f"--percent must be in (0, 1], got {opt.percent}")
    if opt.nce_k <= 0:
        raise UserError(f"--nce_k must be positive, got {opt.nce_k}")
    finish_training_args(opt)
    fast.check_fast_args(opt)
    return opt


def run_cli(main):
    """Run `main()`; user mistakes and a full disk become one `error:` line (exit 2), a NaN loss one line (exit 1),
    Ctrl-C one line saying what is kept and how to continue (exit 130).

    Under torchrun the process group is left at the end (after a barrier when main() succeeded).
    """
    setup_console_logging()
    try:
        main()
    except UserError as e:
        stop(f"error: {e}", 2)
    except NonFiniteLossError as e:
        stop(None if e.logged else f"error: {e}", 1)
    except Preempted as e:
        stop(f"error: {e}; continue with: {resume_command(sys.argv)}", 128 + e.signum)
    except Interrupted as e:
        stop(f"error: interrupted (Ctrl-C); {e}; continue with: {resume_command(sys.argv)}", 130)
    except KeyboardInterrupt:
        stop("error: interrupted (Ctrl-C); no training epoch was in progress, so nothing is lost: rerun the command",
             130)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        stop(f"error: no space left on the disk ({e.filename or e.strerror}); free some space, then rerun the "
             "command (with --resume if its run folder holds a checkpoint)", 2)
    distributed.cleanup()


def stop(line, code):
    """Print the one `error:` line (unless already logged), leave the process group, exit with `code`."""
    if line is not None:
        print(line, file=sys.stderr)
    distributed.cleanup(wait=False)
    sys.exit(code)


def resume_command(argv):
    """`python <script> <args> --resume`: this command line continuing from its run's last checkpoint (a
    `--resume PATH` given becomes a bare --resume)."""
    args, rest = [], list(argv[1:])
    while rest:
        arg = rest.pop(0)
        if arg == "--resume" and rest and not rest[0].startswith("-"):
            rest.pop(0)
        elif arg != "--resume" and not arg.startswith("--resume="):
            args.append(arg)
    return shlex.join(["python", argv[0], *args, "--resume"])

