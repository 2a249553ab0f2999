"""The fast path (helper/engine/fast.py) computes the same experiment: same step in fp32, bf16 close to fp32, no host sync.

CPU only. torch.compile is exercised by test_compile_tiny_model_matches_eager only when KD_TEST_COMPILE=1 (it takes
about a minute on 2 cores); benchmarks/bench_kd.py --quick runs the other fast options end to end.
"""
import argparse
import copy
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from dataset.cifar100 import CIFAR100_MEAN, CIFAR100_STD
from dataset.gpu_loader import GpuResidentLoader
from distiller_zoo.base import Batch, StepContext, distiller_registry
from distiller_zoo.CRD import contrast_indices
from helper.engine import fast
from helper.session.memory import TrainableStudent
from helper.student.build import student_trainee
from helper.errors import UserError
from helper.engine.loop import TeacherOutputs, train_epoch
from models import build_model
from tests.student_utils import built, parse, shared_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_DATA, BATCH, NCE_K, CLASSES = 96, 8, 16, 10
TEACHER, STUDENT = "resnet20", "resnet8"


pytestmark = pytest.mark.usefixtures("one_thread")


def make_opt(distill, *extra):
    opt = parse("--distill", distill, "--model_s", STUDENT, "--nce_k", str(NCE_K), "--batch_size", str(BATCH),
                "--loader", "device", "--learning_rate", "0.05", *extra)
    opt.amp, opt.channels_last, opt.compile, opt.cuda_graphs = "none", False, False, False
    return opt


def gpu_loader(needs, seed=0):
    """The device-resident loader (here on the CPU) over random CIFAR-shaped images."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (N_DATA, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(N_DATA) % CLASSES
    return GpuResidentLoader(images, labels, BATCH, CIFAR100_MEAN, CIFAR100_STD, "cpu", seed=seed,
                             with_index=needs.index or needs.contrast_index)


def gpu_batches(needs, n_batches, seed=0, loader=None):
    """`n_batches` batches of the device-resident loader."""
    loader = loader or gpu_loader(needs, seed)
    batches = []
    while len(batches) < n_batches:
        batches.extend(list(loader)[:n_batches - len(batches)])
    return batches


class Run:
    """A student, its method, plug-ins, weights, optimizer and Trainee built as train_student.py builds them."""

    def __init__(self, opt):
        self.opt = opt
        self.shared = shared_for(TEACHER, CLASSES, N_DATA)
        self.teacher = self.shared.teacher
        self.s = built(opt, self.shared, record=True)
        self.student, self.distiller, self.optimizer = self.s.student, self.s.distiller, self.s.optimizer
        self.temp_module = next((p.module for p in self.s.plugins if p.name == "ctkd"), None)

    def fast(self, **flags):
        """A deep copy of this run with the speed flags applied (helper.engine.fast.prepare_models)."""
        other = copy.deepcopy(self)
        for name, value in flags.items():
            setattr(other.opt, name, value)
        fast.check_fast_args(other.opt)
        fast.prepare_models(other.opt, other.student, other.teacher, extra=[other.distiller])
        other.s = TrainableStudent(other.s.built, other.shared,
                                   student_trainee(other.s.built, other.shared, keep_history=True))
        return other

    @property
    def trainee(self):
        return self.s.trainee

    def train(self, batches, epoch=1):
        """One epoch of the real loop over `batches`; returns the per-step losses (float) and the stats."""
        start = len(self.trainee.history)
        train_epoch(epoch, [tuple(t.clone() for t in items) for items in batches], [self.trainee], "cpu",
                    teacher=self.teacher)
        assert self.trainee.failed is None, self.trainee.failed
        return [float(loss) for loss in self.trainee.history[start:]], self.trainee.meters

    def parameters(self):
        modules = [self.student, self.distiller] + ([self.temp_module] if self.temp_module is not None else [])
        return {f"{i}.{k}": v.detach().clone() for i, m in enumerate(modules) for k, v in m.state_dict().items()}


def train_side_by_side(reference, other, n_batches, epoch=1):
    """Per-step losses of both runs over the same `n_batches` batches of the device-resident loader."""
    batches = gpu_batches(reference.distiller.needs, n_batches)
    return reference.train(batches, epoch)[0], other.train(batches, epoch)[0]


def trained_keys(start, after):
    """The floating-point tensors, BatchNorm running statistics aside, that training changed."""
    return [k for k, v in after.items() if v.is_floating_point() and "running" not in k and not torch.equal(v, start[k])]


def max_relative_difference(a, b):
    return max(((a[k].float() - b[k].float()).norm() / b[k].float().norm().clamp_min(1e-12)).item()
               for k in b if b[k].is_floating_point())


# --- (1) fp32: the options that do not change numerics give the same step ----------------------------------------

def in_float64(run, batches):
    """The run's modules and the batches' images in float64 (the optimizer keeps the same parameters)."""
    for module in (run.student, run.teacher, run.distiller):
        module.double()
    return [tuple(t.double() if t.is_floating_point() else t for t in items) for items in batches]


# The channels-last path sums in another order, and on the CPU its BatchNorm backward is worse conditioned: in float32
# one step of resnet8 differs from the standard step by up to 4 % of the step on AVX2 kernels (1e-4 % on AVX-512;
# the standard step itself is 4 % from float64 on AVX-512 and 1e-4 % on AVX2). So the two paths are compared in
# float64, where any summation order and that amplification (~1e5 x eps) stay below sqrt(eps64) = 1.5e-8 of the step,
# while a different batch, weight or gradient moves a tensor by the size of the step itself.
F64_STEP_RTOL = torch.finfo(torch.float64).eps ** 0.5


def assert_same_step(before, after, reference):
    """`after` and `reference` took the same step from `before` (each tensor within F64_STEP_RTOL of its step)."""
    assert after.keys() == reference.keys()
    for key, value in reference.items():
        if not value.is_floating_point():
            assert torch.equal(after[key], value), key
            continue
        step = (value - before[key]).abs().max().item()
        gap = (after[key] - value).abs().max().item()
        assert gap <= F64_STEP_RTOL * step, (key, gap, step)


@pytest.mark.parametrize("distill", ["kd", "crd"])
def test_step_with_gpu_loader_and_channels_last_equals_the_standard_step(distill):
    standard = Run(make_opt(distill))
    batches = in_float64(standard, gpu_batches(distiller_registry[distill].needs, 1))
    fast_run = standard.fast(channels_last=True)
    before = standard.parameters()
    loss_std, stats_std = standard.train(batches)
    fast_run.trainee.begin_epoch(1, batches + batches)  # two batches: the first step is no print point
    with fast.no_host_sync("cpu"):  # the fast step itself: no device-to-host read (asserted again in (3))
        batch = Batch.from_loader(tuple(t.clone() for t in batches[0]), "cpu")
        fast_run.trainee.step(batch, TeacherOutputs(fast_run.teacher, batch, [fast_run.distiller.needs]), 0)
    loss = fast_run.trainee.history[0]
    assert fast_run.student.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(loss.detach().double(), torch.tensor(loss_std[0], dtype=torch.float64),
                               rtol=F64_STEP_RTOL, atol=0)
    after_std, after_fast = standard.parameters(), fast_run.parameters()
    assert trained_keys(before, after_std), "the step changed nothing"
    assert_same_step(before, after_fast, after_std)  # state_dict keys unchanged by prepare_models too


def test_channels_last_keeps_values_and_checkpoint_keys():
    opt = argparse.Namespace(device="cpu", channels_last=True, amp="none")
    x = torch.randn(2, 3, 8, 8)
    y = fast.to_channels_last(x, opt)
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, y)
    assert fast.to_channels_last(x, argparse.Namespace()) is x
    model = build_model(STUDENT, CLASSES)
    keys = list(model.state_dict())
    reference = copy.deepcopy(model).eval()
    fast.prepare_models(opt, model)
    assert list(model.state_dict()) == keys
    model.eval()
    torch.testing.assert_close(model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))),
                               reference(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))),
                               rtol=1e-5, atol=1e-5)
    clone = copy.deepcopy(model)  # the installed forward is bound to the copy, not to the original
    assert clone.forward.__self__ is clone


def test_defaults_leave_everything_unchanged():
    parser = argparse.ArgumentParser()
    fast.add_fast_args(parser)
    opt = parser.parse_args([])
    assert (opt.amp, opt.channels_last, opt.compile, opt.cuda_graphs) == ("none", False, False, False)
    opt.device = torch.device("cpu")
    model = build_model(STUDENT, CLASSES)
    forward = model.forward
    assert fast.prepare_models(opt, model) == (model, None)
    assert model.forward == forward and "forward" not in vars(model)
    assert isinstance(fast.autocast(opt), type(fast.autocast(argparse.Namespace())))
    compute = object()
    assert fast.wrap_step(compute, opt) is compute


def test_cuda_graphs_without_cuda_and_bad_amp_are_refused():
    with pytest.raises(UserError, match=r"^--cuda_graphs needs a CUDA device \(this run uses cpu\)"):
        parse("--distill", "kd", "--cuda_graphs")  # --device cpu
    opt = argparse.Namespace(device=torch.device("cpu"), amp="bf16", channels_last=False, compile=False,
                             cuda_graphs=False)
    fast.check_fast_args(opt)
    assert opt.compile is False
    assert "amp bf16" in fast.describe(opt)
    with pytest.raises(Exception, match="--amp"):
        fast.amp_dtype(argparse.Namespace(amp="fp8"))


# --- (2) bf16 autocast stays close to fp32; CTKD's temperature still learns ---------------------------------------

# Tolerances of 5 bf16 KD steps against fp32 (observed on resnet20 -> resnet8, batch 8, lr 0.05: loss 2.2e-3,
# whole update 1.3e-2, worst per-tensor update cosine 0.958, temperature update 3.3e-2).
BF16_LOSS_RTOL = 1e-2     # each step's loss, relative
BF16_UPDATE_RTOL = 5e-2   # ||update_bf16 - update_fp32|| / ||update_fp32|| over all trained tensors
BF16_UPDATE_COS = 0.9     # cosine between bf16 and fp32 updates of every trained tensor
BF16_TEMP_RTOL = 0.1      # CTKD temperature parameter update, relative


def test_bf16_autocast_tracks_fp32_over_five_kd_steps_and_ctkd_temperature_learns():
    ctkd = ["--have_mlp", "1", "--mlp_name", "global", "-r", "0.1", "-a", "0.9"]
    fp32 = Run(make_opt("kd", *ctkd))
    start = fp32.parameters()
    bf16 = fp32.fast(amp="bf16", channels_last=True)
    # epoch 10: the end of CTKD's curriculum (lambda -1), so the temperature gets its full (reversed) gradient
    loss_fp32, loss_bf16 = train_side_by_side(fp32, bf16, 5, epoch=10)
    assert all(np.isfinite(loss_bf16))
    np.testing.assert_allclose(loss_bf16, loss_fp32, rtol=BF16_LOSS_RTOL)
    after_fp32, after_bf16 = fp32.parameters(), bf16.parameters()
    trained = trained_keys(start, after_fp32)
    for key in after_fp32:
        if after_fp32[key].is_floating_point():  # parameters and BN running statistics stay float32
            assert after_fp32[key].dtype == after_bf16[key].dtype == torch.float32, key
    update_fp32 = {k: (after_fp32[k] - start[k]).flatten() for k in trained}
    update_bf16 = {k: (after_bf16[k] - start[k]).flatten() for k in trained}
    whole_fp32, whole_bf16 = torch.cat(list(update_fp32.values())), torch.cat(list(update_bf16.values()))
    assert ((whole_bf16 - whole_fp32).norm() / whole_fp32.norm()).item() < BF16_UPDATE_RTOL
    for key in trained:
        cosine = torch.nn.functional.cosine_similarity(update_bf16[key], update_fp32[key], dim=0).item()
        assert cosine > BF16_UPDATE_COS, (key, cosine)
    # the learnable temperature: updated under autocast, in float32, as the fp32 run updates it
    assert "2.global_T" in trained
    torch.testing.assert_close(update_bf16["2.global_T"], update_fp32["2.global_T"], rtol=BF16_TEMP_RTOL, atol=0)
    assert bf16.temp_module.global_T.dtype == torch.float32
    assert bf16.student.bn1.running_mean.dtype == torch.float32
    assert "temp_mean" in next(p for p in bf16.s.plugins if p.name == "ctkd").scalars()


def test_crcd_gradient_elements_train_under_bf16_and_track_fp32():
    """--with_grad differentiates CE w.r.t. the pooled feature: under autocast the network's logits are not a
    function of the float32 pooled copy, so the gradient element must come through the classifier head."""
    fp32 = Run(make_opt("crcd", "--with_grad", "--nce_k", str(NCE_K)))
    bf16 = fp32.fast(amp="bf16", channels_last=True)
    loss_fp32, loss_bf16 = train_side_by_side(fp32, bf16, 3)
    assert all(np.isfinite(loss_bf16))
    np.testing.assert_allclose(loss_bf16, loss_fp32, rtol=BF16_LOSS_RTOL)
    assert bf16.student.fc.weight.grad.abs().sum() > 0


def test_bf16_outputs_are_float32_and_close():
    torch.manual_seed(0)
    model = build_model(STUDENT, CLASSES).eval()
    reference = copy.deepcopy(model)
    fast.prepare_models(argparse.Namespace(device="cpu", amp="bf16"), model)
    x = torch.randn(4, 3, 32, 32)
    feats, logits = model(x, is_feat=True)
    ref_feats, ref_logits = reference(x, is_feat=True)
    assert logits.dtype == torch.float32 and all(f.dtype == torch.float32 for f in feats)
    torch.testing.assert_close(logits, ref_logits, rtol=5e-2, atol=5e-2)
    with fast.autocast(argparse.Namespace(device="cpu", amp="bf16")):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16


# --- (3) no host sync in the step ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [{}, {"amp": "bf16", "channels_last": True}], ids=["fp32", "bf16+cl"])
@pytest.mark.parametrize("distill", ["kd", "crd"])
def test_training_step_has_no_host_sync(distill, flags):
    run = Run(make_opt(distill)).fast(**flags)
    batches = gpu_batches(run.distiller.needs, 3)
    run.trainee.begin_epoch(1, batches)
    for i, items in enumerate(batches[:2]):  # the third step would be the epoch's print point
        with fast.no_host_sync("cpu"):  # the loop body of helper.engine.loop.train_epoch
            batch = Batch.from_loader(items, "cpu")
            run.trainee.step(batch, TeacherOutputs(run.teacher, batch, [run.distiller.needs]), i)
    assert run.trainee.failed is None and np.isfinite(run.trainee.meters["loss"].avg)


def test_the_guard_catches_host_reads():
    with fast.no_host_sync("cpu"):
        for read in (lambda t: t.item(), lambda t: bool(t), lambda t: t.tolist(), lambda t: float(t),
                     lambda t: int(t)):
            with pytest.raises(fast.HostSyncError):
                read(torch.tensor(1.0))
    assert torch.tensor(2.0).item() == 2.0  # restored
    with fast.no_host_sync("cpu", action="record") as guard:
        torch.tensor(1.0).item()
    assert len(guard.events) == 1 and "Tensor.item" in guard.events[0]


class RecordingLoader:
    """Batches of a list; counts the guard's recorded reads made while fetching and between two fetches (a step)."""

    def __init__(self, batches, guard):
        self.batches, self.guard = batches, guard
        self.step_reads, self.fetch_reads = [], []

    def __len__(self):
        return len(self.batches)

    def num_samples(self):
        return sum(len(items[1]) for items in self.batches)

    def __iter__(self):
        last = None
        for items in self.batches:
            before = len(self.guard.events)
            if last is not None:
                self.step_reads.append(before - last)
            items = tuple(t.clone() for t in items)
            last = len(self.guard.events)
            self.fetch_reads.append(last - before)
            yield items


@pytest.mark.parametrize("distill", ["kd", "crd"])
def test_train_epoch_reads_the_device_only_at_print_points(distill):
    run = Run(make_opt(distill, "--print_freq", "100"))
    batches = gpu_batches(run.distiller.needs, 4)
    with fast.no_host_sync("cpu", action="record") as guard:
        loader = RecordingLoader(batches, guard)
        train_epoch(1, loader, [run.trainee], "cpu", teacher=run.teacher)
    assert loader.step_reads == [0, 0, 0], guard.events  # the 4th step ends at the epoch's print point


def test_contrast_draws_of_the_method_make_no_host_reads():
    run = Run(make_opt("crd"))  # building the tables may read the device once; drawing negatives must not
    batch = Batch.from_loader(gpu_batches(run.distiller.needs, 1)[0], "cpu")
    ctx = StepContext(generator=torch.Generator().manual_seed(0))
    with fast.no_host_sync("cpu", action="record") as guard:
        for _ in range(2):
            contrast = contrast_indices(run.distiller.sampler, batch, ctx)
    assert guard.events == [] and contrast.shape == (BATCH, NCE_K + 1)


def test_gpu_loader_draws_plain_batches_without_host_reads():
    with fast.no_host_sync("cpu"):
        gpu_batches(distiller_registry["kd"].needs, 2)


# --- torch.compile (opt-in: slow on the CPU) ------------------------------------------------------------------------

COMPILED_CONTRAST_UPDATE_RTOL = 5e-2  # per tensor ||update_compiled - update_eager|| / ||update_eager||: 1.7e-2 seen
COMPILED_CONTRAST_COS = 0.999         # per tensor cosine between the two updates: 0.99985 seen


@pytest.mark.skipif(os.environ.get("KD_TEST_COMPILE") != "1", reason="set KD_TEST_COMPILE=1 (about a minute on 2 CPUs)")
@pytest.mark.parametrize("distill", [["kd"], ["crcd", "--with_grad"]], ids=["kd", "crcd_with_grad"])
def test_compile_tiny_model_matches_eager(distill):
    """KD: parameters equal after 2 steps. CRCD (with gradient elements, which differentiate through the compiled
    forward): losses equal, and the update within COMPILED_CONTRAST_UPDATE_RTOL: inductor's reordered float32
    reductions move the pooled features by ulps, which exp(cos / 0.05) amplifies (CRD shows the same, 3e-2 on
    its worst tensor; KD 8e-4)."""
    standard = Run(make_opt(*distill))
    start = standard.parameters()
    compiled = standard.fast(compile=True)
    loss_std, loss_c = train_side_by_side(standard, compiled, 2)
    np.testing.assert_allclose(loss_c, loss_std, rtol=1e-4)
    assert list(compiled.student.state_dict()) == list(standard.student.state_dict())
    assert torch._dynamo.config.recompile_limit >= fast.RECOMPILE_LIMIT
    after_std, after_c = standard.parameters(), compiled.parameters()
    if distill == ["kd"]:
        for key, value in after_std.items():
            torch.testing.assert_close(after_c[key], value, rtol=1e-4, atol=1e-5, msg=key)
        return
    trained = trained_keys(start, after_std)
    assert "0.fc.weight" in trained and any(k.startswith("1.") for k in trained)  # student and CRCD embeddings
    for key in trained:
        update_std, update_c = (after_std[key] - start[key]).flatten(), (after_c[key] - start[key]).flatten()
        assert ((update_c - update_std).norm() / update_std.norm()).item() < COMPILED_CONTRAST_UPDATE_RTOL, key
        assert torch.nn.functional.cosine_similarity(update_c, update_std, dim=0).item() > COMPILED_CONTRAST_COS, key


# --- (4) the benchmark's CI-sized run -------------------------------------------------------------------------------

def test_bench_kd_quick_prints_the_table():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_kd.py"), "--quick",
                           "--device", "cpu"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| method | setting | step ms (median) | min-max ms | images/s |" in out
    for method in ("kd", "crd", "crd_bf16bank", "crcd_k500", "crcd_k16384", "crcd_k16384_bf16bank"):
        for setting in ("repdistiller", "+bf16"):
            assert f"| {method} | {setting} |" in out, out
    assert "failed" not in out, out


# --- (6) --cpu_malloc tuned: freed activations reuse their pages --------------------------------------------------

PAGE_FAULTS_PROBE = """
import ctypes, resource, sys
from helper.engine import fast
if sys.argv[1] == "tuned":
    assert fast.tune_cpu_allocator()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
size = 64 << 20  # above glibc's largest dynamic mmap threshold (32 MiB)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="mallopt is glibc's")
def test_tuned_cpu_malloc_reuses_freed_blocks_instead_of_faulting_in_new_pages():
    def faults(mode):
        done = subprocess.run([sys.executable, "-c", PAGE_FAULTS_PROBE, mode], cwd=ROOT, capture_output=True,
                              text=True, check=True)
        return int(done.stdout.strip())
    pages = 64 << 20 >> 12  # one 64 MiB block, written five times
    assert faults("system") > 4 * pages  # glibc maps it and unmaps it on free: its pages fault in every time
    assert faults("tuned") < 1.5 * pages  # the first block's pages are reused


def test_cpu_malloc_is_tuned_on_cpu_runs_only_and_stays_out_of_the_protocol():
    from helper.runs.protocol import experiment_flags
    opt = parse("--distill", "kd")  # --device cpu, default --cpu_malloc tuned
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert opt.cpu_malloc == "tuned" and opt.cpu_malloc_tuned is glibc
    assert ("cpu_malloc tuned" in fast.describe(opt)) is glibc
    assert not {"cpu_malloc", "cpu_malloc_tuned"} & set(experiment_flags(opt))
    opt = parse("--distill", "kd", "--cpu_malloc", "system")
    assert opt.cpu_malloc_tuned is False and "cpu_malloc" not in fast.describe(opt)
    opt = argparse.Namespace(device=torch.device("meta"), amp="none", channels_last=False, compile=False,
                             cuda_graphs=False, cpu_malloc="tuned")
    assert fast.check_fast_args(opt).cpu_malloc_tuned is False  # not a CPU run
