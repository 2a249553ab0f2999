"""Distil a student from a frozen teacher (RepDistiller's train_student.py: same flags, folders and losses).

loss = gamma * CE(student, labels) + alpha * KL_T(student || teacher) + beta * (the method's terms)

Several students in one process (one teacher pass per batch): `--distill kd,crd,dkd`, `--model_s a,b`, or
`--plan FILE` (one line of flags per student). Multi-GPU: `torchrun --nproc_per_node=N train_student.py ...` (DDP;
--batch_size is per process, see README). The run itself is assembled in helper/assembly.py and helper/group.py.
"""
import argparse
import sys

import distiller_zoo  # noqa: F401  registers every method
from crd.memory import MEMORY_DTYPES
from distiller_zoo.base import distiller_registry, get_distiller_class
from helper import fast
from helper.assembly import load_teacher, probe_shapes, teacher_name_from_path  # noqa: F401  (the script's API)
from helper.errors import UserError
from helper.group import plan_runs, run_students
from helper.options import (add_training_args, apply_default_lr, check_finite, explicit_dests, finish_training_args,
                            run_cli)
from helper.plugins import add_plugin_args
from models import model_dict


def build_parser():
    parser = argparse.ArgumentParser(description="Distil a student network from a trained teacher.")
    add_training_args(parser)
    p = parser.add_argument_group("distillation")
    p.add_argument("--path_t", "--path-t", dest="path_t", type=str, default=None, help="teacher checkpoint ({'model': state_dict} file)")
    p.add_argument("--model_s", type=str, default="resnet8",
                   help="student network name (resnet8); a comma-separated list trains one student per name")
    p.add_argument("--distill", type=str, default="kd",
                   help="method: " + ", ".join(sorted(distiller_registry)) + "; a comma-separated list trains one "
                        "student per method in one process, sharing the teacher's forward pass")
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
    p.add_argument("--mode", type=str, default="exact", choices=["exact", "relax"], help="CRD positive mode")
    p.add_argument("--nce_k", type=int, default=16384, help="CRD negatives per sample (16384)")
    p.add_argument("--nce_t", type=float, default=0.07, help="CRD temperature (0.07)")
    p.add_argument("--nce_m", type=float, default=0.5, help="CRD memory momentum (0.5)")
    p.add_argument("--memory_dtype", type=str, default="float32", choices=list(MEMORY_DTYPES),
                   help="storage of CRD/CRCD memory banks; bfloat16 halves them, scores stay float32 (float32)")
    p.add_argument("--percent", type=float, default=1.0, help="fraction of each class's negatives CRD draws from")
    p.add_argument("--hint_layer", type=int, default=2, choices=[0, 1, 2, 3, 4], help="FitNet feature index (2)")
    p.add_argument("--init_epochs", type=int, default=30, help="init-stage epochs of abound/factor/fsp (30)")
    p.add_argument("--model_path", type=str, default="./save/student_model", help="where run folders go")
    p.add_argument("--tb_path", type=str, default="./save/student_tensorboards", help="TensorBoard logs")
    p.add_argument("--dry_run", action="store_true", help="build data, models and method, run no step, exit")
    add_plugin_args(parser)
    fast.add_fast_args(parser)
    for name in sorted(distiller_registry):
        distiller_registry[name].add_args(parser.add_argument_group(f"--distill {name}"))
    return parser


def parse_option(argv=None):
    """The options of one student (the first of a group), checked; the recipe is applied when the teacher is known."""
    parser = build_parser()
    return finish_options(parser.parse_args(argv))


def finish_options(opt):
    if opt.path_t is None:
        raise UserError("--path_t is required: the teacher checkpoint to distil from")
    if "," not in opt.distill:
        get_distiller_class(opt.distill)
    for name in opt.model_s.split(","):
        if name not in model_dict:
            raise UserError(f"unknown --model_s {name!r}; choose one of: {', '.join(sorted(model_dict))}")
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
    if not 0 < opt.percent <= 1:
        raise UserError(f"--percent must be in (0, 1], got {opt.percent}")
    if opt.nce_k <= 0:
        raise UserError(f"--nce_k must be positive, got {opt.nce_k}")
    finish_training_args(opt)
    fast.check_fast_args(opt)
    return opt


def main(argv=None):
    """Train the student(s) of the command line; returns the RunState (a list for a group), None for --dry_run."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    runs = plan_runs(argv, lambda args: finish_options(parser.parse_args(args)),
                     lambda args: explicit_dests(parser, args))
    return run_students(runs)


if __name__ == "__main__":
    run_cli(main)
