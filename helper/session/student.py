"""Student runs: the students of one command line (one, or a group sharing one teacher pass and one data stream)
as run specs of the session. Options are resolved here once (process fields, recipe, teacher), before anything is
built; a built student is never changed afterwards."""
import logging

from helper.engine import distributed, fast
from helper.errors import UserError
from helper.recipes import apply_recipe
from helper.runs.folder import RunFolder
from helper.runs.protocol import run_protocol
from helper.runs.resume import resume_checkpoint
from helper.session import Plan, Stream, describe_data
from helper.student.build import (
    build_shared,
    build_student,
    init_trainee,
    restore_method_state,
    student_trainee,
    with_teacher_accuracy,
)
from helper.naming import check_distinct_folders, check_new_protocol_seed, student_folders
from helper.util import RunLog

log = logging.getLogger("kd")
PROCESS_FIELDS = ("distributed", "rank", "world_size", "device", "no_progress")  # set by distributed.setup


class StudentRun:
    """A built student as a run of the session."""
    script = "train_student"

    def __init__(self, built, shared):
        self.built, self.shared = built, shared
        self.opt, self.label, self.arch = built.opt, built.label, built.opt.model_s
        self.folder, self.tb_folder = built.folder, built.tb_folder

    def resume(self, allow_fresh=False):
        """The validated checkpoint to resume from (every rank reads it), restored into the student, its method and
        plug-ins before anything is written; None when the student starts at epoch 1 (allow_fresh: see
        helper.runs.resume.resume_path)."""
        s = self.built
        return resume_checkpoint(self.opt, self.folder, self.arch, self.script, s.student, s.optimizer, s.scaler,
                                 self.check_same_student, lambda ckpt: restore_method_state(ckpt, s), allow_fresh)

    def check_same_student(self, ckpt):
        """The checkpoint to resume from must be this student's: same method, same teacher file, same plug-ins."""
        opt, shared = self.opt, self.shared
        if ckpt.get("distill", opt.distill) != opt.distill:
            raise UserError(f"--resume {self.folder}: the checkpoint was trained with --distill {ckpt['distill']}, "
                            f"not {opt.distill}; resume with the same --distill")
        if ckpt.get("teacher_arch", shared.teacher_arch) != shared.teacher_arch:
            raise UserError(f"--resume {self.folder}: the checkpoint was distilled from a {ckpt['teacher_arch']} "
                            f"teacher, not {shared.teacher_arch}; pass the same --path_t")
        if ckpt.get("teacher_sha256", shared.teacher_sha256) != shared.teacher_sha256:
            raise UserError(f"--resume {self.folder}: the checkpoint was distilled from another teacher file "
                            f"(sha256 {ckpt['teacher_sha256'][:12]}...); pass the same --path_t")
        for plugin in self.built.plugins:
            if plugin.key not in ckpt:
                raise UserError(f"--resume {self.folder}: the checkpoint has no state of {plugin.switch}; it was "
                                f"trained without it")

    def protocol(self):
        return run_protocol(self.opt, self.shared)

    def trainees(self, record, resumed):
        """The student's Trainee, and its init stage's (AB, FT, FSP starting fresh with --init_epochs > 0)."""
        s, shared = self.built, self.shared
        main = student_trainee(s, shared, record=record, val_loader=shared.data.val_loader)
        has_init = not resumed and s.distiller.needs.init_stage and self.opt.init_epochs > 0
        return main, init_trainee(s, shared, record) if has_init else None


def student_plan(runs):
    """The Plan of the planned students (helper.student.plan.plan_runs), or None for --dry_run: the shared data and
    teacher, each student's options resolved (recipe, teacher), each student built."""
    shared_opt = runs[0].opt
    distributed.setup(shared_opt)
    for run in runs[1:]:
        share_process_fields(run.opt, shared_opt)
    shared = build_shared(shared_opt, [r.opt.distill for r in runs])
    describe_data(shared_opt, shared.data)
    for run in runs:
        resolve_student_options(run, shared.teacher_arch)
    folders = [student_folders(run.opt, shared.teacher_arch) for run in runs]
    check_distinct_folders(runs, [f[0] for f in folders])
    check_new_protocol_seed(runs, [f[0] for f in folders], shared.teacher_sha256)
    students = [build_student(run.opt, shared, run.label, f) for run, f in zip(runs, folders)]
    for s in students:
        describe_student(s)
    fast.prepare_models(shared_opt, None, shared.teacher)
    log.info(fast.describe(shared_opt))
    if shared_opt.dry_run:
        for s in students:
            RunFolder(s.folder).check_free(s.opt.resume, s.opt.overwrite)
        log.info("dry run: %s -> %s built; run folders free; no step run", shared.teacher_arch,
                 ", ".join(f"{s.opt.model_s} ({s.opt.distill}): {s.folder}" for s in students))
        return None
    shared = with_teacher_accuracy(shared, shared_opt)
    stream = Stream(loader=shared.data.train_loader, sampler=shared.data.train_sampler, device=shared_opt.device,
                    seed=shared_opt.seed, no_progress=shared_opt.no_progress, teacher=shared.teacher,
                    plot=shared_opt.plot)
    return Plan([StudentRun(s, shared) for s in students], stream)


def share_process_fields(opt, first):
    """The process fields (distributed, rank, world size, device) of the first student's options, which
    distributed.setup resolved once for the process."""
    for name in PROCESS_FIELDS:
        setattr(opt, name, getattr(first, name))


def resolve_student_options(run, teacher_arch):
    """The last options that depend on the teacher: its architecture, and the method's recipe for the pair."""
    apply_recipe(run.opt, teacher_arch, run.explicit, log_prefix=f"[{run.label}] " if run.label else "")
    run.opt.model_t = teacher_arch


def describe_student(s):
    """The method, its weights and plug-ins, in the log."""
    opt = s.opt
    plugins = ", ".join(p.switch for p in s.plugins) or "none"
    RunLog(s.label).info("%s -> %s: --distill %s, -r %g -a %g -b %g, %d epochs, lr %g (%s), plug-ins: %s",
                         opt.model_t, opt.model_s, opt.distill, opt.gamma, opt.alpha, opt.beta, opt.epochs,
                         opt.learning_rate, opt.lr_schedule, plugins)
