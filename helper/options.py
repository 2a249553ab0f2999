"""Flags shared by train_teacher.py and train_student.py (RepDistiller's names and defaults)."""
import argparse
import errno
import logging
import math
import re
import shlex
import sys
import zlib

from helper import distributed
from helper.errors import Interrupted, NonFiniteLossError, UserError
from helper.logger import setup_console_logging
from helper.util import parse_decay_epochs, resolve_device

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
                   help="trial id, part of the run folder name; without --seed it also seeds the run (0)")
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
    return p


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
    opt.distributed, opt.rank, opt.world_size = False, 0, 1  # helper.distributed.setup sets them under torchrun
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
        stop(None if getattr(e, "logged", False) else f"error: {e}", 1)
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

