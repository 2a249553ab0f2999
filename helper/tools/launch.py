"""`python -m helper.launch`: a table of student runs as jobs, on SLURM (one job array) through submitit, on this
machine, or in this process.

    python -m helper.launch --path_t T --plan scripts/plans/resnet32x4.txt --trials 0,1,2 --folder save/launch/t1 \\
        --executor slurm --slurm_partition gpu --gpus_per_node 1 --timeout_min 1440
    python -m helper.launch --status save/launch/t1         # one line per job, then the counts
    python -m helper.launch --resume save/launch/t1         # submit again the jobs that are not done

Every flag that is not the launcher's is train_student.py's (comma lists and --plan included). The request expands
into jobs: one per (trial, chunk of at most --group_size students of the teacher), each running its students as one
group in one process (one teacher pass per batch) at exactly the run folders their single runs would write. Every
student line is checked before anything is submitted. The code the jobs run is frozen at submission (submitit's
RsyncSnapshot: a copy of the tracked files under FOLDER/code), so editing the checkout changes no queued or
requeued job. A job that gets the scheduler's warning signal (SIGUSR2, --signal_delay_s before its time limit or on
preemption) finishes its step, writes step checkpoints (helper.engine.preemption) and is requeued; it then
continues with --resume. `--executor local` runs the jobs as processes here, at most --array_parallelism at a time,
each on its own GPU when there are GPUs; `debug` runs them one after another in this process.
"""
import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from helper.errors import Preempted, UserError
from helper.options import explicit_dests, finish_student_options, one_line_errors, student_parser
from helper.naming import check_distinct_folders, check_new_protocol_seed, student_folders
from helper.runs.files import file_sha256, load_checkpoint, write_text_atomic
from helper.runs.protocol import git_commit
from helper.runs.records import DamagedFile, read_json, read_log, read_results
from helper.session.student import resolve_student_options
from helper.student.plan import plan_runs
from helper.student.teacher import teacher_arch

MANIFEST = "launch.json"
PATH_FLAGS = ("--path_t", "--path-t", "--model_path", "--tb_path", "--data_root", "--plan")
EXECUTORS = ("slurm", "local", "debug")


def launch_parser():
    p = argparse.ArgumentParser(description="Run a table of student runs as jobs (SLURM, local processes, debug).",
                                epilog="Every other flag is train_student.py's.")
    p.add_argument("--status", metavar="DIR", help="print the state of every job of the launch folder DIR")
    p.add_argument("--resume", metavar="DIR", help="submit again the jobs of DIR that are not done")
    p.add_argument("--folder", default=None, help="the launch folder: manifest, job plans, logs, code snapshot")
    p.add_argument("--trials", default="0", help="comma list of trials; each student runs once per trial (0)")
    p.add_argument("--executor", default="slurm", help="slurm | local | debug (slurm)")
    p.add_argument("--group_size", type=int, default=8,
                   help="students per job at most; a job trains them in one process, one teacher pass per batch (8)")
    p.add_argument("--array_parallelism", type=int, default=0,
                   help="jobs running at once (SLURM: the array's %%N; local: default 1, or the number of GPUs)")
    p.add_argument("--slurm_partition", default=None, help="SLURM partition (the cluster's default)")
    p.add_argument("--timeout_min", type=int, default=24 * 60, help="time limit of a job, minutes (1440)")
    p.add_argument("--nodes", type=int, default=1, help="nodes per job; DDP across them (1)")
    p.add_argument("--gpus_per_node", type=int, default=0, help="GPUs per node; one task per GPU (0: CPU)")
    p.add_argument("--tasks_per_node", type=int, default=0,
                   help="processes per node (default: one per GPU, else 1); several make a DDP run")
    p.add_argument("--cpus_per_task", type=int, default=2, help="CPUs per task (2)")
    p.add_argument("--mem_gb", type=float, default=None, help="memory per node, GB (the partition's default)")
    p.add_argument("--signal_delay_s", type=int, default=120,
                   help="SIGUSR2 this many seconds before the time limit: time to finish a step and checkpoint (120)")
    return p


# ---- expanding the request into jobs -------------------------------------------------------------------------------
def absolute_paths(argv):
    """argv with the values of path flags made absolute (the jobs run in the code snapshot, not here)."""
    out, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        flag, eq, value = arg.partition("=")
        if flag in PATH_FLAGS and eq:
            out.append(f"{flag}={os.path.abspath(value)}")
        elif arg in PATH_FLAGS and rest:
            out += [arg, os.path.abspath(rest.pop(0))]
        else:
            out.append(arg)
    return out


def without_plan(argv):
    out, rest = [], list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--plan" and rest:
            rest.pop(0)
        elif not arg.startswith("--plan="):
            out.append(arg)
    return out


def parse_trials(text):
    trials = [t.strip() for t in str(text).split(",") if t.strip()]
    if not trials:
        raise UserError(f"--trials {text!r} names no trial; give a comma list such as 0,1,2")
    return trials


def check_group_size(group_size):
    if group_size < 1:
        raise UserError(f"--group_size must be at least 1, got {group_size}")


def expand(student_argv, trials, group_size, folder):
    """The jobs of a request: [{"name", "argv", "folders", "labels"}], every student checked, nothing written."""
    check_group_size(group_size)
    parser = one_line_errors(student_parser())
    argv = absolute_paths(student_argv)
    jobs, arch = [], None
    for trial in trials:
        with_trial = argv + ["--trial", trial]
        runs = plan_runs(with_trial, lambda args: finish_student_options(parser.parse_args(args)),
                         lambda args: explicit_dests(parser, args))
        if arch is None:  # every trial has the same --path_t: read the teacher file once
            arch = teacher_arch(load_checkpoint(runs[0].opt.path_t), runs[0].opt.path_t, runs[0].opt.model_t)
            sha256 = file_sha256(runs[0].opt.path_t)
        for run in runs:
            resolve_student_options(run, arch)
        folders = [student_folders(r.opt, arch)[0] for r in runs]
        check_distinct_folders(runs, folders)
        check_new_protocol_seed(runs, folders, sha256)
        for start in range(0, len(runs), group_size):
            chunk = runs[start:start + group_size]
            name = f"trial{trial}-{start // group_size}"
            job_argv = without_plan(with_trial)
            if len(chunk) == 1:
                job_argv += list(chunk[0].tokens)
            else:
                job_argv += ["--plan", os.path.join(os.path.abspath(folder), "plans", f"{name}.txt")]
            jobs.append({"name": name, "argv": job_argv, "lines": [list(r.tokens) for r in chunk],
                         "folders": folders[start:start + group_size],
                         "labels": [f"{r.opt.distill}>{r.opt.model_s}" for r in chunk], "submissions": []})
    return jobs


# ---- the job: one group of students in one process ---------------------------------------------------------------
class StudentJob:
    """What a job runs: train_student.py on its students, with --resume once any of its run folders holds a started
    run (so a requeued job continues). On the scheduler's SIGUSR2 the run stops after a step checkpoint and hands the
    signal back to submitit, which requeues the job (its `checkpoint` is the same job)."""

    def __init__(self, argv, folders):
        self.argv, self.folders = list(argv), list(folders)

    def __call__(self):
        import submitit

        import train_student
        from helper.runs.logger import setup_console_logging
        setup_console_logging()
        if job_tasks(submitit) > 1:  # DDP over the job's tasks: torchrun's variables, from SLURM's
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        started = any(os.path.isfile(os.path.join(f, "options.json")) for f in self.folders)
        try:
            train_student.main(self.argv + (["--resume"] if started else []))
        except Preempted as e:
            if e.signum == signal.SIGUSR2:
                print(f"error: {e}; requeueing", file=sys.stderr)
                signal.raise_signal(signal.SIGUSR2)  # submitit's handler: checkpoint() and requeue
            raise
        return self.folders

    def checkpoint(self, *args, **kwargs):  # submitit's name: the job to requeue
        import submitit
        return submitit.helpers.DelayedSubmission(StudentJob(self.argv, self.folders))


def job_tasks(submitit):
    """The number of processes of this job (1 in a debug job, which has no job environment)."""
    try:
        return submitit.JobEnvironment().num_tasks
    except RuntimeError:
        return 1


# ---- submitting ----------------------------------------------------------------------------------------------------
def slurm_partitions():
    """The partitions SLURM knows (sinfo), or None when SLURM is not there."""
    if not shutil.which("sinfo"):
        return None
    out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
    return set(out.stdout.split()) if out.returncode == 0 else None


def check_executor(args):
    """The executor's name, then (for slurm) that SLURM answers here."""
    if args.executor not in EXECUTORS:
        raise UserError(f"unknown --executor {args.executor!r}; choose one of: {', '.join(EXECUTORS)}")
    if args.executor == "slurm":
        known = slurm_partitions()
        if known is None:
            raise UserError("--executor slurm: no SLURM here (sinfo missing or failing); use --executor local, or "
                            "start a one-node cluster with `bash scripts/slurm_local.sh start`")
        if args.slurm_partition is not None and args.slurm_partition not in known:
            raise UserError(f"--slurm_partition {args.slurm_partition!r} is not a partition of this cluster; "
                            f"choose one of: {', '.join(sorted(known))}")


def executor_for(args, folder, tasks):
    import submitit
    executor = submitit.AutoExecutor(folder=os.path.join(folder, "jobs"), cluster=args.executor)
    params = dict(timeout_min=args.timeout_min, nodes=args.nodes, tasks_per_node=tasks,
                  cpus_per_task=args.cpus_per_task, gpus_per_node=args.gpus_per_node, name="kd")
    if args.mem_gb is not None:
        params["mem_gb"] = args.mem_gb
    if args.executor == "slurm":
        params.update(slurm_signal_delay_s=args.signal_delay_s, slurm_array_parallelism=args.array_parallelism or 256)
        if args.slurm_partition:
            params["slurm_partition"] = args.slurm_partition
    executor.update_parameters(**params)
    return executor


def tasks_per_node(args):
    return args.tasks_per_node or max(args.gpus_per_node, 1)


def frozen_code(folder):
    """submitit's RsyncSnapshot of this repository under FOLDER/code (jobs run there)."""
    from submitit.helpers import RsyncSnapshot
    if not RsyncSnapshot.available():
        raise UserError("freezing the code for the jobs needs rsync; install it (apt-get install rsync)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return RsyncSnapshot(snapshot_dir=os.path.join(folder, "code"), root_dir=root)


def submit(args, folder, manifest, jobs):
    """Submit `jobs` (entries of the manifest) and record their job ids; returns the submitit jobs."""
    executor = executor_for(args, folder, tasks_per_node(args))
    work = [StudentJob(job["argv"], job["folders"]) for job in jobs]
    if args.executor == "debug":
        submitted = [executor.submit(w) for w in work]
        record_ids(folder, manifest, jobs, submitted)
        for job in submitted:
            job.result()
        return submitted
    if args.executor == "slurm":
        with frozen_code(folder), executor.batch():  # one job array
            pending = [executor.submit(w) for w in work]
        submitted = pending
        record_ids(folder, manifest, jobs, submitted)
        return submitted
    return submit_locally(args, folder, manifest, jobs, work, executor)


def submit_locally(args, folder, manifest, jobs, work, executor):
    """Local processes, at most --array_parallelism at a time (default: one per GPU, else 1), each on its own GPU."""
    import torch
    gpus = list(range(torch.cuda.device_count()))
    slots = args.array_parallelism or max(len(gpus), 1)
    queue, running, submitted = list(zip(jobs, work)), {}, []
    with frozen_code(folder):
        while queue or running:
            for slot in [s for s in range(slots) if s not in running]:
                if not queue:
                    break
                job, w = queue.pop(0)
                if gpus and args.gpus_per_node:
                    executor.update_parameters(local_visible_gpus=[gpus[slot % len(gpus)]])
                handle = executor.submit(w)
                running[slot] = handle
                submitted.append(handle)
                record_ids(folder, manifest, [job], [handle])
            time.sleep(0.5)
            running = {s: h for s, h in running.items() if not h.done()}
    return submitted


def record_ids(folder, manifest, jobs, submitted):
    for job, handle in zip(jobs, submitted):
        job["submissions"].append(str(handle.job_id))
    write_manifest(folder, manifest)


def write_manifest(folder, manifest):
    write_text_atomic(os.path.join(folder, MANIFEST), json.dumps(manifest, indent=2))


def read_manifest(folder):
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise UserError(f"{folder} is not a launch folder (no {MANIFEST}); give the --folder of a launch")
    try:
        manifest = read_json(path, {})
    except DamagedFile as e:
        raise UserError(f"{path}: {e}") from None
    if not isinstance(manifest.get("jobs"), list):
        raise UserError(f"{path} holds no job list; give the --folder of a launch")
    return manifest


def write_plans(folder, jobs):
    os.makedirs(os.path.join(folder, "plans"), exist_ok=True)
    for job in jobs:
        if len(job["folders"]) > 1:
            lines = "".join(shlex.join(tokens) + "\n" for tokens in job["lines"])
            write_text_atomic(os.path.join(folder, "plans", f"{job['name']}.txt"), lines)


def launch(args, student_argv):
    """Expand, check, write the manifest and job plans, submit."""
    if args.folder is None:
        raise UserError("--folder is required: the launch folder (manifest, job plans and logs go there)")
    folder = os.path.abspath(args.folder)
    if os.path.isfile(os.path.join(folder, MANIFEST)):
        raise UserError(f"{folder} already holds a launch; use --status {args.folder} or --resume {args.folder}, "
                        "or another --folder")
    trials = parse_trials(args.trials)  # the launcher's own flags, then the machine, then every student's flags
    check_group_size(args.group_size)
    check_executor(args)
    jobs = expand(student_argv, trials, args.group_size, folder)
    os.makedirs(folder, exist_ok=True)
    write_plans(folder, jobs)
    commit = git_commit()
    manifest = {"command": ["python", "-m", "helper.launch", *sys.argv[1:]], "executor": args.executor,
                "launcher": {k: v for k, v in vars(args).items() if k not in ("status", "resume")},
                "commit": commit.split("+")[0], "dirty": commit.endswith("+dirty"), "created": time.time(),
                "jobs": jobs}
    write_manifest(folder, manifest)
    print(f"{len(jobs)} job(s), {sum(len(j['folders']) for j in jobs)} run(s); executor {args.executor}; {folder}")
    submit(args, folder, manifest, jobs)
    return manifest


def resume(folder):
    """Submit again the jobs of a launch folder that are not done, with the launch's executor and parameters."""
    manifest = read_manifest(folder)
    args = argparse.Namespace(**manifest["launcher"])
    check_executor(args)
    states = job_states(folder, manifest)
    todo = [job for job, state in zip(manifest["jobs"], states) if state.kind not in ("done", "running", "pending")]
    print(f"{len(todo)} of {len(manifest['jobs'])} job(s) to submit again")
    if todo:
        submit(args, os.path.abspath(folder), manifest, todo)
    return manifest


# ---- status ----------------------------------------------------------------------------------------------------------
class JobState:
    def __init__(self, kind, detail="", requeues=0):
        self.kind, self.detail, self.requeues = kind, detail, requeues


def scheduler_states(ids):
    """{job id: state} from squeue (PENDING, RUNNING, ...); {} without SLURM."""
    if not ids or not shutil.which("squeue"):
        return {}
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(sorted({i.split("_")[0] for i in ids}))],
                         capture_output=True, text=True, timeout=60)
    states = {}
    for line in out.stdout.splitlines():
        job_id, _, state = line.partition(" ")
        states[job_id] = state
    return states


def process_alive(pid):
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def stops_of(folder):
    """How many times the run in `folder` was stopped by a signal (its train.log says so at each stop)."""
    path = os.path.join(folder, "train.log")
    if not os.path.isfile(path):
        return 0
    with open(path, errors="replace") as f:
        return sum(" received SIG" in line for line in f)


def run_progress(folder):
    """(status of results.json or None, 'epoch e/E, ETA ...' from log.jsonl)."""
    try:
        results = read_results(folder)
        records, _ = read_log(folder)
    except DamagedFile as e:
        return "failed", str(e)
    if results and results.get("status") in ("finished", "failed"):
        return results["status"], results.get("error", "")
    if records:
        last = records[-1]
        epochs = (read_json(os.path.join(folder, "options.json"), {}) or {}).get("epochs", "?")
        return None, f"epoch {last['step']}/{epochs}, ETA {int(last.get('eta_s', 0)) // 60} min"
    return None, ""


def job_states(folder, manifest):
    executor = manifest["executor"]
    last_ids = [job["submissions"][-1] for job in manifest["jobs"] if job["submissions"]]
    queue = scheduler_states(last_ids) if executor == "slurm" else {}
    states = []
    for job in manifest["jobs"]:
        progress = [run_progress(f) for f in job["folders"]]
        requeues = max([stops_of(f) for f in job["folders"]] + [0])
        job_id = job["submissions"][-1] if job["submissions"] else None
        if any(status == "failed" for status, _ in progress):
            reason = next(detail for status, detail in progress if status == "failed")
            states.append(JobState("failed", reason, requeues))
        elif all(status == "finished" for status, _ in progress):
            states.append(JobState("done", "", requeues))
        elif executor == "slurm" and queue.get(job_id) in ("PENDING", "REQUEUED", "CONFIGURING"):
            states.append(JobState("pending", "", requeues))
        elif executor == "slurm" and queue.get(job_id) in ("RUNNING", "COMPLETING"):
            states.append(JobState("running", progress[0][1], requeues))
        elif executor == "local" and job_id and process_alive(job_id):
            states.append(JobState("running", progress[0][1], requeues))
        elif job_id is None:
            states.append(JobState("not submitted", "", requeues))
        else:
            states.append(JobState("failed", job_failure(folder, job_id) or "the job ended before its runs finished",
                                   requeues))
    return states


def job_failure(folder, job_id):
    """The last `error:` line of a job's stderr (submitit's log), if any."""
    for name in (f"{job_id}_0_log.err", f"{job_id}_log.err"):
        path = os.path.join(folder, "jobs", name)
        if os.path.isfile(path):
            with open(path, errors="replace") as f:
                errors = [line.strip() for line in f if line.startswith("error:")]
            if errors:
                return errors[-1][len("error: "):]
    return ""


def status(folder):
    """One line per job, then the counts; returns the states."""
    manifest = read_manifest(folder)
    states = job_states(folder, manifest)
    for job, state in zip(manifest["jobs"], states):
        text = state.kind + (f" ({state.detail})" if state.detail else "")
        if state.requeues:
            text += f", requeued x{state.requeues}"
        print(f"{job['name']:<12} {', '.join(job['labels'])}: {text}")
    counts = {}
    for state in states:
        counts[state.kind] = counts.get(state.kind, 0) + 1
    print(", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) + f" (of {len(states)} jobs)")
    if manifest["executor"] == "slurm" and not sacct_works():
        print("state from the run folders and squeue: this cluster has no accounting database (sacct)")
    return states


def sacct_works():
    if not shutil.which("sacct"):
        return False
    return subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=60).returncode == 0


def main(argv=None):
    args, student_argv = one_line_errors(launch_parser()).parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.status:
        return status(args.status)
    if args.resume:
        return resume(args.resume)
    return launch(args, student_argv)


if __name__ == "__main__":
    from helper.options import run_cli
    run_cli(main)
