"""Multi-process training through torchrun (DDP, Gloo on CPU) on Fashion-MNIST, 2 processes.

Every run goes through tests/ddp_worker.py, which launches the real entry points and, for the test only,
dumps each rank's final modules, records each rank's file writes, and (where said) keeps BatchNorm in eval
mode and turns augmentation off.

Why BatchNorm in eval mode for the equivalence test: in train mode BN normalises with the statistics of
the batch it sees, so 2 ranks x 8 samples and 1 process x 16 samples are different models (per-rank BN
is what DDP trains, as DataParallel did in the peers' ImageNet runs). With BN normalising by its running
statistics (fixed in eval mode) each sample's loss depends on the sample only; the mean of two rank means
of 8 then equals the mean of 16, and DDP's averaged gradient equals the single-process gradient up to
float32 rounding. The global batches are the same: the default (device-resident) loader, like torch's
DistributedSampler (the CRD run uses that path), draws one permutation from (seed, epoch) and deals it out rank-wise
(rank r takes positions r, r + 2, ...), so step k of the two ranks covers positions 16k..16k+15, which is what a
1-process torchrun run (world size 1: the permutation in order) uses with batch 16.

Tolerance: the two runs differ only in float32 summation order (per-rank means, then the all-reduce), a
few ulp per gradient. Training amplifies such differences, the more so as the learning rate grows on this
network without batch normalisation: at lr 0.05 they reached 3.5e-5 after 8 steps here (rounding only: two
in-process halves averaged by hand give the same growth), at lr 0.02 they stay at 6e-8 (1-2 ulp). So the
test trains at lr 0.02 and asserts atol 5e-6 / rtol 1e-5 (about 100x the observed gap, for other CPUs'
kernels), and also that the gap is < 1e-3 of how far the second epoch moved the weights (0.014), so it
cannot pass by the weights not moving; a rank stepping on its own half, or on other batches, differs by
about the size of a step.
"""
import json
import os
import shlex
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "ddp_worker.py")
FMNIST = "/usr/share/datasets/fashion-mnist"
TEACHER_FOLDER = "resnet8_fashion_mnist_lr_0.02_decay_0.0005_trial_0"
EPS32 = torch.finfo(torch.float32).eps
LONGEST_SUM = 16 * 32 * 32  # a 3x3 convolution's weight gradient over a global batch of 16 at 32 x 32



def common_args(root, batch_size, epochs, subset=66):
    return ["--dataset", "fashion_mnist", "--subset", str(subset), "--batch_size", str(batch_size), "--epochs", str(epochs),
            "--num_workers", "0", "--device", "cpu", "--seed", "3", "--learning_rate", "0.02", "--lr_decay_epochs", "100",
            "--save_freq", "1",
            "--model_path", str(root / "models"), "--tb_path", str(root / "tb")]


def launch(nproc, kind, args, out, watch, exact=False):
    """torchrun the worker; returns (stderr text, {rank: state}, {rank: recorded writes})."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, KD_TEST_OUT=str(out), KD_TEST_WATCH=str(watch), KD_TEST_BN_EVAL="1" if exact else "0",
               KD_TEST_NO_AUGMENT="1" if exact else "0", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone", WORKER,
           kind, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = {r: torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(nproc)}
    writes = {r: json.load(open(out / f"writes_rank{r}.json")) for r in range(nproc)}
    return proc.stderr, states, writes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The torchrun launches, each run once (lazily) and shared by the tests below."""
    if not os.path.isdir(FMNIST):
        pytest.skip("apt-get install dataset-fashion-mnist")
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with Gloo")
    base = tmp_path_factory.mktemp("ddp")
    cache = {}

    def get(name):
        if name in cache:
            return cache[name]
        root = base / name
        # 66 samples: 4 global batches of 16 and one of 2 (1 per rank); 33 validation samples (17 + 16)
        if name == "single":    # 1 process x batch 16, 2 epochs
            result = launch(1, "teacher", ["--model", "resnet8", *common_args(root, 16, 2)], root / "out", root, True)
        elif name == "ddp":     # 2 processes x batch 8, 2 epochs
            result = launch(2, "teacher", ["--model", "resnet8", *common_args(root, 8, 2)], root / "out", root, True)
        elif name == "resume":  # 2 processes: 1 epoch, then resumed to 2
            first = launch(2, "teacher", ["--model", "resnet8", *common_args(root, 8, 1)], root / "out1", root, True)
            second = launch(2, "teacher", ["--model", "resnet8", *common_args(root, 8, 2), "--resume"], root / "out2",
                            root, True)
            result = (first, second)
        elif name == "crd":     # 2 processes, CRD student of the ddp run's teacher (BN in train mode, augmentation on)
            teacher = base / "ddp" / "models" / TEACHER_FOLDER / "resnet8_last.pth"
            get("ddp")
            # 63 samples: DistributedSampler pads to 2 x 32 with one repeated sample; per rank batches of 12, 12, 8
            args = ["--path_t", str(teacher), "--distill", "crd", "--model_s", "resnet8", "--nce_k", "16",
                    "--loader", "torch", *common_args(root, 12, 2, subset=63)]
            result = launch(2, "student", args, root / "out", root)
        elif name == "init":    # 2 processes, FT with its init stage, KL with a CTKD temperature
            teacher = base / "ddp" / "models" / TEACHER_FOLDER / "resnet8_last.pth"
            get("ddp")
            args = ["--path_t", str(teacher), "--distill", "factor", "--model_s", "resnet8", "--init_epochs", "1",
                    "-a", "1", "--have_mlp", "1", *common_args(root, 16, 1)]
            result = launch(2, "student", args, root / "out", root)
        elif name in ("group_single", "group_ddp"):  # a group of two students: 1 x 16 or 2 x 8, exact mode
            teacher = base / "ddp" / "models" / TEACHER_FOLDER / "resnet8_last.pth"
            get("ddp")
            nproc, batch = (1, 16) if name == "group_single" else (2, 8)
            args = ["--path_t", str(teacher), "--distill", "kd,attention", "--model_s", "resnet8",
                    *common_args(root, batch, 2, subset=16)]  # one global batch per epoch: two steps in all
            result = launch(nproc, "student", args, root / "out", root, True)
        cache[name] = (root, result)
        return cache[name]

    return get


def log_records(folder):
    return [json.loads(line) for line in open(folder / "log.jsonl")]


def test_two_processes_match_one_process_on_the_same_global_batches(runs):
    single_root, (_, single, _) = runs("single")
    ddp_root, (stderr, ddp, _) = runs("ddp")
    assert "global batch = 2 x --batch_size 8 = 16" in stderr
    epoch_1 = torch.load(ddp_root / "models" / TEACHER_FOLDER / "ckpt_epoch_1.pth", weights_only=True)["model"]
    moved = 0.0  # how far the second epoch moved the weights
    for key, value in single[0]["model"].items():
        torch.testing.assert_close(ddp[0]["model"][key], ddp[1]["model"][key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(ddp[0]["model"][key], value, rtol=1e-5, atol=5e-6, msg=key)
        if value.is_floating_point():
            moved = max(moved, (value - epoch_1[key]).abs().max().item())
    gap = max((ddp[0]["model"][k] - v).abs().max().item() for k, v in single[0]["model"].items()
              if v.is_floating_point())
    assert moved > 1e-3 and gap < 1e-3 * moved, (gap, moved)

    # Training and test metrics are reduced over ranks: rank 0's log matches the single process's.
    single_log = log_records(single_root / "models" / TEACHER_FOLDER)
    ddp_log = log_records(ddp_root / "models" / TEACHER_FOLDER)
    assert [r["step"] for r in ddp_log] == [1, 2]
    for one, two in zip(single_log, ddp_log):
        for name in ("train_loss", "train_loss_cls", "test_loss"):
            assert two[name] == pytest.approx(one[name], rel=1e-4), name
        for name in ("train_acc", "test_acc", "test_acc_top5"):
            assert two[name] == pytest.approx(one[name], abs=1e-6), name


def test_a_group_under_torchrun_equals_the_single_process_group_on_the_same_global_batches(runs):
    """As the teacher test above: the ranks agree exactly, and each student's gap to the single-process group is
    float32 rounding. The group takes two steps (one global batch per epoch), so training has no time to amplify
    the rounding (over ten steps attention's -b 1000 grew it to 2 % of a step on AVX2 kernels); a sum of n terms in
    another order moves by at most n * eps of its terms, bounded here by the second step's largest change."""
    _, (_, single, _) = runs("group_single")
    root, (stderr, ddp, _) = runs("group_ddp")
    assert [r["label"] for r in ddp[0]["runs"]] == ["kd>resnet8", "attention>resnet8"]
    for one, two, other_rank in zip(single[0]["runs"], ddp[0]["runs"], ddp[1]["runs"]):
        method = one["label"].split(">")[0]
        (folder,) = [f for f in (root / "models").iterdir() if f"_{method}_" in f.name]
        epoch_1 = torch.load(folder / "ckpt_epoch_1.pth", weights_only=True)["model"]
        gap = moved = 0.0
        for key, value in one["model"].items():
            torch.testing.assert_close(two["model"][key], other_rank["model"][key], rtol=0, atol=0, msg=key)
            if value.is_floating_point() and "running" not in key and "num_batches" not in key:
                gap = max(gap, (two["model"][key] - value).abs().max().item())
                moved = max(moved, (value - epoch_1[key]).abs().max().item())
        assert moved > 1e-3 and gap < LONGEST_SUM * EPS32 * moved, (one["label"], gap, moved)


def test_only_rank_0_writes_files(runs):
    for name in ("ddp", "resume", "crd", "init"):
        root, result = runs(name)
        launches = result if name == "resume" else (result,)
        for _, _, writes in launches:
            assert writes[1] == [], (name, writes[1][:5])
            assert writes[0], f"{name}: the write recorder saw nothing on rank 0"
    root, _ = runs("ddp")
    folder = root / "models" / TEACHER_FOLDER
    assert sorted(os.listdir(folder)) == sorted(["options.json", "log.jsonl", "results.json", "resnet8_best.pth",
                                                 "resnet8_last.pth", "ckpt_epoch_1.pth", "ckpt_epoch_2.pth",
                                                 "train.log"])
    assert len(os.listdir(root / "tb")) == 1
    options = json.load(open(folder / "options.json"))
    assert options["distributed"] is True and options["world_size"] == 2 and options["rank"] == 0
    results = json.load(open(folder / "results.json"))
    assert results["last_epoch"] == 2
    last = torch.load(folder / "resnet8_last.pth", weights_only=True)
    assert last["epoch"] == 2 and not any(k.startswith("module.") for k in last["model"])
    root, _ = runs("init")
    (student_folder,) = (root / "models").iterdir()
    assert sorted(os.listdir(student_folder)) == sorted(["options.json", "log.jsonl", "results.json", "resnet8_init.pth",
                                                         "resnet8_best.pth", "resnet8_last.pth", "ckpt_epoch_1.pth",
                                                         "train.log"])
    assert [(r["kind"], r["step"]) for r in log_records(student_folder)] == [("init", 1), ("epoch", 1)]


def test_init_stage_and_ctkd_temperature_stay_identical_across_ranks(runs):
    _, (_, states, _) = runs("init")
    for part in range(2):  # student, FT's paraphraser and translator
        for key, value in states[0]["modules"][part].items():
            torch.testing.assert_close(states[1]["modules"][part][key], value, rtol=0, atol=0, msg=key)
    temperature = states[0]["temperature"]
    assert temperature and temperature["global_T"].item() != 1.0  # trained away from its initial value
    for key, value in temperature.items():
        torch.testing.assert_close(states[1]["temperature"][key], value, rtol=0, atol=0, msg=key)


def test_resume_under_torchrun_continues_at_the_next_epoch_exactly(runs):
    root, (first, second) = runs("resume")
    _, (_, uninterrupted, _) = runs("ddp")
    stderr, resumed, _ = second
    assert "resumed at epoch 1" in stderr
    folder = root / "models" / TEACHER_FOLDER
    assert [r["step"] for r in log_records(folder)] == [1, 2]
    assert torch.load(folder / "resnet8_last.pth", weights_only=True)["epoch"] == 2
    for key, value in uninterrupted[0]["model"].items():
        torch.testing.assert_close(resumed[0]["model"][key], value, msg=key)
        torch.testing.assert_close(resumed[1]["model"][key], value, msg=key)


def test_crd_memory_banks_stay_identical_across_ranks(runs):
    root, (stderr, states, _) = runs("crd")
    student0, distiller0 = states[0]["modules"]
    student1, distiller1 = states[1]["modules"]
    banks = [k for k in distiller0 if k.endswith(("memory_v1", "memory_v2"))]
    z_key = next(k for k in distiller0 if k.endswith("contrast.params"))
    assert len(banks) == 2 and distiller0[banks[0]].shape == (63, 128)
    for key in distiller0:  # banks, normalisation constants, embeddings
        torch.testing.assert_close(distiller1[key], distiller0[key], rtol=0, atol=0, msg=key)
    for key in student0:
        torch.testing.assert_close(student1[key], student0[key], rtol=0, atol=0, msg=key)
    # Every row was updated from one rank's batch or the other's: updated rows have unit norm, while the
    # uniform initial rows have norms spread by a few percent around 1.
    for key in banks:
        norms = distiller0[key].norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms), rtol=0, atol=1e-5)
    assert (distiller0[z_key][2:4] > 0).all()
    ckpt = torch.load(next((root / "models").iterdir()) / "resnet8_last.pth", weights_only=True)
    torch.testing.assert_close(ckpt["distiller"][banks[0]], distiller0[banks[0]], rtol=0, atol=0)


def script_commands(script):
    """The torchrun command lines of an ImageNet script, printed instead of run (TORCHRUN=echo): argv lists."""
    env = dict(os.environ, TORCHRUN="echo", NPROC="8")
    out = subprocess.run(["sh", os.path.join(ROOT, "scripts", script)], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def test_imagenet_scripts_launch_8_processes_with_the_global_batch_256_split_and_valid_flags():
    import train_student
    import train_teacher
    vanilla, distill = script_commands("run_imagenet_vanilla.sh"), script_commands("run_imagenet_distill.sh")
    assert len(vanilla) == 2 and len(distill) == 6
    methods = []
    for command in vanilla + distill:
        assert command[0] == "--nproc_per_node=8" and command[1] in ("train_teacher.py", "train_student.py")
        opt = (train_teacher if command[1] == "train_teacher.py" else train_student).parse_option(command[2:])
        assert opt.dataset == "imagenet" and opt.batch_size * 8 == 256 and opt.learning_rate == 0.1
        assert opt.lr_decay_epochs == [30, 60, 90] and opt.epochs == 100 and opt.weight_decay == 1e-4
        if command[1] == "train_student.py":
            assert opt.model_s == "ResNet18" and opt.path_t.endswith(".pth")
            methods.append((opt.distill, bool(opt.have_mlp)))
    assert methods == [("kd", False), ("kd", True), ("crd", False), ("semckd", False), ("dkd", False), ("ckd", False)]


def test_bank_update_rows_give_every_repeat_its_first_occurrence():
    from crd.memory import first_occurrence_positions, momentum_update_, rows_of_all_ranks
    y = torch.tensor([5, 2, 9, 2, 7, 5])  # e.g. rank 0's [5, 2, 9] then rank 1's [2, 7, 5] (padded repeats)
    assert first_occurrence_positions(y).tolist() == [0, 1, 2, 1, 4, 0]
    assert first_occurrence_positions(torch.tensor([3, 1, 2])).tolist() == [0, 1, 2]
    values, bank = torch.randn(6, 4), torch.randn(10, 4)
    repeated, once = bank.clone(), bank.clone()
    momentum_update_(repeated, y, values[first_occurrence_positions(y)], 0.5)
    momentum_update_(once, y[[0, 1, 2, 4]], values[[0, 1, 2, 4]], 0.5)
    assert torch.equal(repeated, once)
    v = torch.randn(3, 4, requires_grad=True)
    rows, same = rows_of_all_ranks(torch.tensor([3, 1, 2]), v)  # single process: the very same tensors
    assert same is v and rows.tolist() == [3, 1, 2]


def test_bank_updates_under_ddp_make_no_host_sync_and_equal_one_process_on_the_global_batch(tmp_path):
    """2 ranks x 3 samples: banks and Z identical on both ranks and equal to one process on the 6 samples (step 1;
    CRD's Z too), then to the single-process update with each dataset index once (step 2 repeats index 1)."""
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with Gloo")
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import ddp_memory_worker as worker

    from crd.memory import momentum_update_
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           os.path.join(ROOT, "tests", "ddp_memory_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"memory_rank{r}.pt", weights_only=True) for r in range(2)]
    (v1, v2, y, idx), (v1b, v2b, yb, _) = worker.global_steps()
    for name, memory_class in (("ContrastMemory", worker.ContrastMemory), ("RelationMemory", worker.RelationMemory)):
        for step in range(2):
            for key, value in ranks[0][name][step].items():
                assert torch.equal(ranks[1][name][step][key], value), (name, step, key)
        torch.manual_seed(0)
        single = memory_class(worker.DIM, worker.N_ROWS, worker.K)
        single(v1, v2, y, idx)
        for key, value in single.state_dict().items():
            if name == "RelationMemory" and key == "params":
                continue  # CRCD's relations pair samples within a rank's batch (README), so its Z is per-rank data
            torch.testing.assert_close(ranks[0][name][0][key], value, rtol=1e-6, atol=1e-7, msg=(name, key))
        once = [0, 1, 2, 4, 5]  # index 1 appears at positions 1 and 2: the first occurrence is kept
        for bank, values in (("memory_v1", v1b), ("memory_v2", v2b)):
            expected = single.state_dict()[bank].clone()
            momentum_update_(expected, yb[once], values[once], single.momentum)
            torch.testing.assert_close(ranks[0][name][1][bank], expected, rtol=0, atol=1e-7, msg=(name, bank))
