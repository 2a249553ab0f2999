"""--from_run RUN_FOLDER replays a recorded run: the flags its options.json records (as the run resolved them),
then the flags given, which win; a recorded value this version no longer accepts is one line. Fashion-MNIST, CPU."""
import json

import pytest

import train_teacher
from helper.errors import UserError
from helper.options import NOT_REPLAYED, explicit_dests, finish_student_options, replayed_argv, student_parser
from helper.session.student import resolve_student_options
from helper.runs.records import write_options
from helper.student.plan import PlannedRun
from helper.util import plain_options
from tests.test_reliability import needs_fmnist, only_folder, student_args, teacher_args

pytestmark = [needs_fmnist, pytest.mark.usefixtures("one_thread")]


def replayed_student(argv, teacher_arch="resnet8"):
    """A student's options as train_student.main resolves them, with --from_run replayed."""
    parser = student_parser()
    argv = replayed_argv(parser, argv)
    run = PlannedRun(finish_student_options(parser.parse_args(argv)), frozenset(explicit_dests(parser, argv)), "")
    resolve_student_options(run, teacher_arch)
    return run.opt


def test_a_replayed_teacher_run_is_the_recorded_run_in_its_own_folder(tmp_path):
    first = train_teacher.main(teacher_args(tmp_path, "--learning_rate", "0.02", "--lr_decay_epochs", "1",
                                            "--seed", "5"))
    folder = only_folder(tmp_path, "models")
    replay = train_teacher.parse_option(["--from_run", str(folder), "--trial", "1"])
    assert (replay.model, replay.epochs, replay.learning_rate, replay.lr_decay_epochs, replay.seed) == \
        ("resnet8", 1, 0.02, [1], 5)
    assert replay.trial == "1" and replay.save_folder != str(folder) and replay.from_run == str(folder)
    second = train_teacher.main(["--from_run", str(folder), "--trial", "1"])
    assert second.best_acc == first.best_acc  # the same flags and seed train the same network
    recorded = json.load(open(folder.parent / folder.name.replace("trial_0", "trial_1") / "options.json"))
    assert recorded["from_run"] == str(folder)


def test_replaying_without_a_new_trial_names_the_recorded_folder_and_is_refused(tmp_path):
    train_teacher.main(teacher_args(tmp_path))
    with pytest.raises(UserError, match="--resume|--overwrite"):
        train_teacher.main(["--from_run", str(only_folder(tmp_path, "models"))])


def test_a_trials_own_seed_follows_the_new_trial(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "options.json").write_text(json.dumps({"model": "resnet8", "trial": "0", "seed": 0, "epochs": 3}))
    replay = train_teacher.parse_option(["--from_run", str(folder), "--trial", "4"])
    assert (replay.seed, replay.epochs) == (4, 3)


def test_a_replayed_student_keeps_its_resolved_weights_and_explicit_flags_win(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    recorded = plain_options(replayed_student(student_args(tmp_path, "t.pth", "--distill", "crd", "--nce_k", "32")))
    write_options(folder, recorded)  # as a run writes it
    assert (recorded["gamma"], recorded["alpha"], recorded["beta"]) == (1.0, 0.0, 0.8)  # CRD's recipe
    replay = replayed_student(["--from_run", str(folder), "-a", "0.5", "--trial", "1"])
    assert (replay.distill, replay.nce_k, replay.gamma, replay.alpha, replay.beta) == ("crd", 32, 1.0, 0.5, 0.8)
    assert replay.trial == "1" and replay.path_t == "t.pth"
    again = plain_options(replayed_student(["--from_run", str(folder)]))
    flags = {a.dest for a in student_parser()._actions if a.option_strings} - NOT_REPLAYED - {"help"}
    assert [flag for flag in sorted(flags) if again.get(flag) != recorded.get(flag)] == []  # every flag round-trips


@pytest.mark.parametrize("content, words", [
    ({"model": "resnet8", "lr_schedule": "linear"}, ["--lr_schedule linear", "no longer accepts"]),
    ({"model": "resnet8", "epochs": "many"}, ["--epochs many", "no longer accepts"]),
    ({"model": "resnet8", "plot": "yes"}, ["--plot", "true/false"]),
    ("{not json", ["options.json", "not valid JSON"]),
])
def test_a_recorded_value_that_no_longer_parses_is_one_line_naming_the_flag(tmp_path, content, words):
    (tmp_path / "options.json").write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(UserError) as err:
        train_teacher.parse_option(["--from_run", str(tmp_path)])
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"--from_run {tmp_path}")
    assert all(word in message for word in words), message


def test_a_folder_without_options_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no options.json"):
        train_teacher.parse_option(["--from_run", str(tmp_path / "nowhere")])
