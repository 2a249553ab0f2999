"""The fast path on one device: bf16 autocast, channels_last, torch.compile, CUDA graphs, and a host-sync guard.

Each option is a flag, off by default; with every flag off these functions return their inputs unchanged,
so the standard path is untouched. None of them changes the experiment (batch, epochs, schedule, losses):
channels_last and compile change kernels only; bf16 changes the precision of the networks' arithmetic.

How the options are applied (all in `prepare_models`, on the bare networks, before any DDP wrapping):
* `--channels_last`: the networks' 4-D weights and their input images use the NHWC memory format.
* `--amp bf16`: each network's forward runs under `torch.autocast(dtype=bfloat16)` and its outputs (logits and
  features) are returned in float32, so every loss, KL term, CTKD temperature, CRD/CRCD embedding and memory
  bank, meter and optimizer update stays float32. Inside the networks convolutions and linears run in bf16;
  BatchNorm keeps float32 weights and running statistics and accumulates its batch statistics in float32
  (ATen/cuDNN mixed-type batch norm). Parameters and gradients stay float32 (no loss scaling needed for bf16).
* `--amp fp16`: the same with float16, for GPUs without bfloat16; the loss is scaled by a torch.amp.GradScaler
  (saved in checkpoints, so --resume stays exact); a step whose gradients overflow is skipped and counted.
* `--compile`: `nn.Module.compile()` on the student (forward and, through AOTAutograd, backward) and on the
  teacher's inference forward, in place, so state_dict keys and checkpoints are unchanged; `dynamic=False`
  (the last partial batch and validation get their own static graphs).
* `--cuda_graphs`: the same compile with mode "reduce-overhead" (CUDA graph trees), CUDA only; `wrap_step`
  marks each training step's start. Without a CUDA device it is refused with one line.
* `--cpu_malloc tuned` (the default; CPU runs on glibc only): glibc returns freed blocks above 128 KiB to the
  system and re-maps them on the next step, so every step's activations fault in freshly zeroed pages (about
  100k page faults per step of KD resnet32x4 -> resnet8x4, batch 64, 10-20 % of the step). `tune_cpu_allocator`
  raises glibc's mmap and trim thresholds (mallopt) so freed activations are reused in place; the process keeps
  up to CPU_MALLOC_KEEP of freed memory. Same numbers, fewer page faults; `--cpu_malloc system` keeps glibc's
  defaults.
The training loop itself already has no host sync per step (meters accumulate on the device and are read at
print points only); `no_host_sync` checks that: CUDA's sync debug mode on a GPU, patched Tensor conversions on
the CPU.

Status when written: checked on the CPU only (tests/test_fast.py; compile with KD_TEST_COMPILE=1); no GPU was
available, so the CUDA paths (bf16 support check, sync debug mode, --cuda_graphs) have not run yet.
"""
import contextlib
import functools
import logging
import traceback

import torch

from helper.errors import UserError

log = logging.getLogger("kd")

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_fast_args(parser):
    """--amp, --channels_last, --compile, --cuda_graphs (all off by default) in their own argument group."""
    p = parser.add_argument_group("speed (same experiment, faster kernels)")
    p.add_argument("--amp", type=str, default="none", choices=sorted(AMP_DTYPES),
                   help="bf16 / fp16: run the networks under bfloat16 / float16 autocast; losses, BatchNorm "
                        "statistics, parameters and optimizer stay float32; fp16 (GPUs without bf16: V100, T4, "
                        "RTX 20xx) adds a gradient scaler whose skipped steps are counted in the logs (none)")
    p.add_argument("--channels_last", action="store_true",
                   help="store the networks' weights and input images channels-last (NHWC): faster convolutions "
                        "on tensor cores, same numbers up to rounding")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the student (forward and backward) and the teacher's forward; the first "
                        "steps are slow while kernels compile")
    p.add_argument("--cuda_graphs", action="store_true",
                   help="with --compile semantics, replay each step as CUDA graphs (torch.compile mode "
                        "reduce-overhead); CUDA only: refused on another device")
    p.add_argument("--cpu_malloc", type=str, default="tuned", choices=("tuned", "system"),
                   help="tuned: on a CPU run (Linux, glibc), keep freed memory in the process so each step's "
                        "activations reuse their pages instead of faulting in new ones (fewer page faults, "
                        "13-19%% faster epochs in benchmarks/RESULTS.md, same numbers); system: glibc's defaults (tuned)")
    return p


def _get(opt, name, default):
    return getattr(opt, name, default) if opt is not None else default


def _device(opt, device=None):
    return torch.device(device if device is not None else _get(opt, "device", "cpu"))


def amp_dtype(opt):
    """torch.bfloat16 / torch.float16 for --amp bf16 / fp16, else None."""
    amp = _get(opt, "amp", "none") or "none"
    if amp not in AMP_DTYPES:
        raise UserError(f"unknown --amp {amp!r}; choose one of: {', '.join(sorted(AMP_DTYPES))}")
    return AMP_DTYPES[amp]


def check_fast_args(opt, logger=log):
    """Validate the speed flags against opt.device (in place); returns opt.

    --cuda_graphs without a CUDA device is a UserError; --cuda_graphs implies --compile;
    --amp bf16 on a GPU without bfloat16 support is a UserError.
    """
    device = _device(opt)
    dtype = amp_dtype(opt)
    if _get(opt, "cuda_graphs", False) and device.type != "cuda":
        raise UserError(f"--cuda_graphs needs a CUDA device (this run uses {device}); drop it, or pick a GPU "
                        "with --device cuda")
    if _get(opt, "cuda_graphs", False) and not _get(opt, "compile", False):
        logger.info("--cuda_graphs implies --compile (torch.compile mode reduce-overhead)")
        opt.compile = True
    if dtype is torch.bfloat16 and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        raise UserError(f"--amp bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; drop --amp")
    opt.cpu_malloc_tuned = False
    if device.type == "cpu" and _get(opt, "cpu_malloc", "tuned") == "tuned":
        opt.cpu_malloc_tuned = tune_cpu_allocator()
    return opt


CPU_MALLOC_KEEP = 1 << 30  # bytes: glibc's mmap threshold and trim threshold under --cpu_malloc tuned
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)


def tune_cpu_allocator(keep=CPU_MALLOC_KEEP):
    """Raise glibc's mmap and trim thresholds to `keep` bytes; True where applied (Linux, glibc), else False.

    Both must be set: setting one switches off glibc's dynamic threshold, and a trim threshold alone leaves the
    mmap threshold at 128 KiB, which maps and unmaps every activation (several times the page faults).
    """
    import ctypes
    import ctypes.util
    import platform
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, keep)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, keep))
    except (OSError, AttributeError):
        return False


def describe(opt):
    """One line naming the speed options in effect, for the log."""
    parts = [f"amp {_get(opt, 'amp', 'none') or 'none'}"]
    for flag in ("channels_last", "compile", "cuda_graphs"):
        if _get(opt, flag, False):
            parts.append(flag)
    if _get(opt, "cpu_malloc_tuned", False):
        parts.append("cpu_malloc tuned")
    return "speed options: " + ", ".join(parts)


def grad_scaler(opt):
    """A torch.amp.GradScaler for --amp fp16 (on the run's device type), else None."""
    if amp_dtype(opt) is not torch.float16:
        return None
    return torch.amp.GradScaler(_device(opt).type)


def autocast(opt, device=None):
    """torch.autocast(device type, dtype) with --amp bf16 / fp16, else a no-op context."""
    dtype = amp_dtype(opt)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=_device(opt, device).type, dtype=dtype)


def to_channels_last(images, opt):
    """images [B, C, H, W] in the channels-last memory format with --channels_last (same values), else unchanged."""
    if _get(opt, "channels_last", False) and torch.is_tensor(images) and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


def to_float32(out):
    """Floating tensors below float32 (in nested lists/tuples/dicts) cast to float32; everything else unchanged."""
    if torch.is_tensor(out):
        return out.float() if out.is_floating_point() and out.dtype != torch.float64 else out
    if isinstance(out, (list, tuple)):
        items = [to_float32(item) for item in out]
        return type(out)(items) if not hasattr(out, "_fields") else type(out)(*items)
    if isinstance(out, dict):
        return {key: to_float32(value) for key, value in out.items()}
    return out


def _fast_forward(self, *args, **kwargs):
    """A network's forward with its input in the fast memory format and under autocast; float32 outputs."""
    config = self._fast_forward_config
    if args:
        args = (to_channels_last(args[0], config),) + args[1:]
    if config.amp == "none":
        return type(self).forward(self, *args, **kwargs)
    with autocast(config, config.device):
        out = type(self).forward(self, *args, **kwargs)
    return to_float32(out)


class _ForwardConfig:
    """What _fast_forward reads; kept on the module (a plain object, so copy.deepcopy of the module works)."""

    def __init__(self, amp, channels_last, device):
        self.amp, self.channels_last, self.device = amp, channels_last, device


def _wrap_forward(model, opt):
    """Install _fast_forward as `model.forward`, bound to the model (class forward and state_dict keys unchanged)."""
    config = _ForwardConfig(_get(opt, "amp", "none") or "none", _get(opt, "channels_last", False), str(_device(opt)))
    if config.amp == "none" and not config.channels_last:
        return model
    model._fast_forward_config = config
    model.forward = _fast_forward.__get__(model)
    return model


def compile_kwargs(opt):
    """Arguments of torch.compile for the options: static shapes; mode reduce-overhead with --cuda_graphs on CUDA."""
    kwargs = {"dynamic": False}
    if _get(opt, "cuda_graphs", False) and _device(opt).type == "cuda":
        kwargs["mode"] = "reduce-overhead"
    return kwargs


RECOMPILE_LIMIT = 32  # graphs per code object; compiled modules share nn.Module._call_impl's (torch's default: 8)


def prepare_models(opt, student, teacher=None, extra=()):
    """Apply --channels_last, --amp and --compile to the networks, in place; returns (student, teacher).

    `student` and `teacher` are the bare networks (call this before wrapping them in DDP); `teacher` may be None
    (train_teacher.py). `extra` modules (e.g. the distiller's regressors) are only converted to channels_last:
    they run in float32 on the networks' float32 outputs. Parameters are not replaced, so an optimizer built
    before or after this call trains the same tensors; state_dict keys are unchanged.
    With --compile, each (network, train/eval, grad mode, batch shape) gets its own static graph: student and
    teacher in training and validation, full and last partial batches, are 8 graphs, torch's default limit for
    one code object, which every compiled module shares; past it dynamo silently runs eager, so the limit is
    raised to RECOMPILE_LIMIT.
    """
    channels_last = _get(opt, "channels_last", False)
    compiled = _get(opt, "compile", False) or _get(opt, "cuda_graphs", False)
    kwargs = compile_kwargs(opt) if compiled else None
    if compiled:
        import torch._dynamo as dynamo  # imported here: only compiled runs pay for it
        dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for module in [m for m in (student, teacher) if m is not None] + list(extra):
        if channels_last:
            module.to(memory_format=torch.channels_last)
    for model in (student, teacher):
        if model is None:
            continue
        _wrap_forward(model, opt)
        if compiled:
            model.compile(**kwargs)
    return student, teacher


def wrap_step(compute, opt):
    """The loop's compute(batch), or a model's call in validation, for the options: with --cuda_graphs each call
    starts a new CUDA-graph step."""
    if not (_get(opt, "cuda_graphs", False) and _device(opt).type == "cuda"):
        return compute

    @functools.wraps(compute)
    def step(*args):
        torch.compiler.cudagraph_mark_step_begin()
        return compute(*args)
    return step


class HostSyncError(RuntimeError):
    """A device-to-host read (item, tolist, bool, int, float, numpy) where none is allowed."""


_CONVERSIONS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__complex__")


class HostSyncGuard:
    """Context manager catching host syncs: CUDA's sync debug mode on a GPU; on the CPU (where nothing syncs) the
    Tensor conversions that would sync on a GPU, patched for the duration.

    action 'error': raise (HostSyncError on the CPU, RuntimeError from CUDA); 'record' (CPU): let them through and
    append one line per conversion (method and calling line) to `self.events`; 'warn' (CUDA): warn.
    """

    def __init__(self, device="cpu", action="error"):
        self.device = torch.device(device)
        self.action = action
        self.events = []
        self._saved = {}
        self._mode = None

    def __enter__(self):
        if self.device.type == "cuda":
            self._mode = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn" if self.action == "warn" else "error")
            return self
        for name in _CONVERSIONS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original
            setattr(torch.Tensor, name, self._patched(name, original))
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode(self._mode)
            return False
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved = {}
        return False

    def _patched(self, name, original):
        guard = self

        def conversion(tensor, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            where = f"Tensor.{name} at {caller.filename}:{caller.lineno}"
            if guard.action == "error":
                raise HostSyncError(f"host sync: {where}")
            guard.events.append(where)
            return original(tensor, *args, **kwargs)
        return conversion


def no_host_sync(device="cpu", action="error"):
    """HostSyncGuard(device, action): `with no_host_sync(opt.device): step()` fails on any host sync in step."""
    return HostSyncGuard(device, action)
