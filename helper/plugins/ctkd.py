"""CTKD's learnable temperature as a plug-in (Li et al., AAAI 2023): --have_mlp 1 [--mlp_name global|instance].

A learnable distillation temperature trained adversarially through a gradient reversal layer. With `--have_mlp 1`
the plug-in builds the temperature module (`Global_T`, or `Instance_T` per sample), maps its output with
`map_temperature`, hands it to the KL term and to every method that consumes a temperature
(StepContext.temperature), and trains it with the student (same SGD and lr schedule, same DDP module).

Sign convention (CTKD's): the reversal layer multiplies the gradient reaching the temperature by lambda, with no
extra minus. The curriculum takes lambda from --decay_max (0) down to --decay_min (-1), so the SGD step on the
temperature becomes theta += lr * |lambda| * dL/dtheta: gradient ascent on the distillation loss, harder as
|lambda| grows. The student's own gradients are untouched. `Global_T`, `Instance_T` and `GradientReversal` keep
CTKD's names and interfaces and stay importable from distiller_zoo.CTKD.
"""
import math

import torch
from torch import nn

from helper.engine import distributed
from helper.engine.meters import AverageMeter, meters_state, restore_meters
from helper.errors import UserError

from . import Plugin, register_plugin


class GradientReversalFunction(torch.autograd.Function):
    """Curriculum Temperature for Knowledge Distillation (Li et al., AAAI 2023): identity; backward grad * lambda_."""

    @staticmethod
    def forward(ctx, x, lambda_):
        ctx.lambda_ = lambda_
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.lambda_, None


class GradientReversal(nn.Module):
    """Curriculum Temperature for Knowledge Distillation (Li et al., AAAI 2023): module form of the reversal layer."""

    def forward(self, x, lambda_):
        """x of any shape, returned unchanged; its gradient is multiplied by the float lambda_."""
        return GradientReversalFunction.apply(x, lambda_)


class Global_T(nn.Module):
    """Curriculum Temperature for Knowledge Distillation (Li et al., AAAI 2023): one temperature for all samples.

    CTKD's interface: `Global_T()(fake_input1, fake_input2, lambda_)` returns the raw parameter [1] through the
    gradient reversal layer; the caller maps it with `map_temperature` (t_start + t_end * sigmoid), as CTKD's loop does.
    """

    def __init__(self):
        super().__init__()
        self.global_T = nn.Parameter(torch.ones(1))
        self.grl = GradientReversal()

    def forward(self, fake_input1, fake_input2, lambda_):
        """The raw temperature [1], its gradient multiplied by the curriculum's lambda_; the inputs are unused."""
        return self.grl(self.global_T, lambda_)


class Instance_T(nn.Module):
    """Curriculum Temperature for Knowledge Distillation (Li et al., AAAI 2023): one temperature per sample.

    forward(logit_t, logit_s, lambda_) -> raw temperatures [B, 1] through the reversal layer, from a 2-layer MLP on the
    concatenated, detached logits [B, 2K] (no gradient reaches the networks through this path); the caller maps them
    with `map_temperature`. The last bias starts at 1, so the initial temperature is Global_T's. CTKD never released
    an instance-wise module: this design is ours.
    """

    def __init__(self, num_classes, hidden_dim=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * num_classes, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, 1))
        nn.init.constant_(self.mlp[2].bias, 1.0)
        self.grl = GradientReversal()

    def forward(self, logit_t, logit_s, lambda_):
        dtype = self.mlp[0].weight.dtype
        raw = self.mlp(torch.cat([logit_t, logit_s], dim=1).detach().to(dtype))
        return self.grl(raw, lambda_)


def map_temperature(raw, t_start, t_end):
    """CTKD's mapping of a raw temperature to (t_start, t_start + t_end): t_start + t_end * sigmoid(raw)."""
    return t_start + t_end * torch.sigmoid(raw)


def add_ctkd_args(parser):
    """CTKD's flags and defaults, except a working curriculum (0 -> -1 over 10 epochs, CTKD's script)."""
    p = parser.add_argument_group("CTKD learnable temperature (plug-in)")
    p.add_argument("--have_mlp", type=int, default=0, help="1: learn the KD temperature with CTKD (0)")
    p.add_argument("--mlp_name", type=str, default="global", choices=["global", "instance"],
                   help="one temperature (global) or one per sample (instance) (global)")
    p.add_argument("--t_start", type=float, default=1, help="lowest temperature: T = t_start + t_end * sigmoid (1)")
    p.add_argument("--t_end", type=float, default=20, help="temperature range above --t_start (20)")
    p.add_argument("--cosine_decay", type=int, default=1, help="1: cosine curriculum for lambda, 0: linear (1)")
    p.add_argument("--decay_max", type=float, default=0, help="lambda at epoch 0 (0)")
    p.add_argument("--decay_min", type=float, default=-1, help="lambda from --decay_loops on; < 0 reverses (-1)")
    p.add_argument("--decay_loops", type=float, default=10, help="epochs to go from --decay_max to --decay_min (10)")
    return p


def build_temperature(opt, num_classes):
    """The temperature module for --mlp_name, or None when --have_mlp is 0."""
    if not opt.have_mlp:
        return None
    if opt.decay_loops <= 0:
        raise UserError(f"--decay_loops must be positive with --have_mlp 1, got {opt.decay_loops}")
    if opt.t_start <= 0 or opt.t_end < 0:
        raise UserError(f"--t_start must be positive and --t_end non-negative, got {opt.t_start} and {opt.t_end}")
    if opt.mlp_name == "global":
        return Global_T()
    if opt.mlp_name == "instance":
        return Instance_T(num_classes)
    raise UserError(f"unknown --mlp_name {opt.mlp_name!r}; choose global or instance")


def curriculum_lambda(epoch, opt):
    """lambda for 1-based `epoch`: CTKD's cosine from --decay_max to --decay_min, epoch clamped to [0, decay_loops].

    The linear variant runs max + (min - max) * epoch / loops; CTKD's own linear schedule ignored --decay_max and
    stopped one step short of --decay_min.
    """
    if opt.decay_loops <= 0:
        raise UserError(f"--decay_loops must be positive, got {opt.decay_loops}")
    progress = min(max(epoch, 0), opt.decay_loops) / opt.decay_loops
    if opt.cosine_decay:
        return opt.decay_min + (opt.decay_max - opt.decay_min) * (math.cos(math.pi * progress) + 1.0) / 2.0
    return opt.decay_max + (opt.decay_min - opt.decay_max) * progress


def stats(temp):
    """{'temp_mean', 'temp_std'} of a temperature [1] or [B, 1], as detached float32 0-d tensors (no host sync)."""
    t = temp.detach().float()
    return {"temp_mean": t.mean(), "temp_std": t.std(correction=0)}


@register_plugin("ctkd")
class CTKDTemperature(Plugin):
    """T = t_start + t_end * sigmoid(raw) per batch, raw from Global_T / Instance_T through the reversal layer with
    the curriculum's lambda of the epoch; read by the KL term and by every method that consumes a temperature.
    Computed in float32 with autocast off; trained by the student's optimizer; its epoch mean and spread and lambda
    go to the logs."""
    kind = "temperature"
    checkpoint_key = "temperature"
    switch = "--have_mlp 1"
    tag_flags = frozenset({"have_mlp", "mlp_name"})

    def __init__(self, opt, probe):
        super().__init__(opt, probe)
        self.module = build_temperature(opt, probe.num_classes)
        self.lam = 0.0
        self.meters = {}

    @classmethod
    def add_args(cls, parser):
        add_ctkd_args(parser)

    @classmethod
    def enabled(cls, opt):
        return bool(getattr(opt, "have_mlp", 0))

    @classmethod
    def tag(cls, opt):
        return f"ctkd:{opt.mlp_name}"

    @classmethod
    def check(cls, opt):
        build_temperature(opt, 1)  # validates --decay_loops, --t_start, --t_end, --mlp_name

    def modules(self):
        return [self.module]

    def start_epoch(self, epoch):
        self.lam = curriculum_lambda(epoch, self.opt)
        self.meters = {"temp_mean": AverageMeter(), "temp_std": AverageMeter()}

    def prepare(self, ctx, out_s, out_t):
        with torch.autocast(device_type=out_t.logits.device.type, enabled=False):
            raw = self.module(out_t.logits.float(), out_s.logits.float(), self.lam)
            ctx.temperature = map_temperature(raw.float(), self.opt.t_start, self.opt.t_end)
        for name, value in stats(ctx.temperature).items():
            self.meters[name].update(value)

    def epoch_state(self):
        return meters_state(self.meters)

    def load_epoch_state(self, state):
        restore_meters(state, self.meters)

    def scalars(self):
        out = distributed.reduce_meters({n: m for n, m in self.meters.items() if m.count}, self.opt.device)
        if out:
            out["ctkd_lambda"] = self.lam
        return out

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state):
        self.module.load_state_dict(state)
