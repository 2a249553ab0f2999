"""CTKD's learnable temperature as a plug-in (Li et al., AAAI 2023): --have_mlp 1 [--mlp_name global|instance]."""
import torch

from distiller_zoo.CTKD import add_ctkd_args, build_temperature, curriculum_lambda, map_temperature, stats
from helper import distributed
from helper.util import AverageMeter

from . import Plugin, register_plugin


@register_plugin("ctkd")
class CTKDTemperature(Plugin):
    """T = t_start + t_end * sigmoid(raw) per batch, raw from Global_T / Instance_T through the reversal layer with
    the curriculum's lambda of the epoch; read by the KL term and by every method that consumes a temperature.
    Computed in float32 with autocast off; trained by the student's optimizer; its epoch mean and spread and lambda
    go to the logs."""
    kind = "temperature"
    checkpoint_key = "temperature"
    switch = "--have_mlp 1"

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

    def scalars(self):
        out = distributed.reduce_meters({n: m for n, m in self.meters.items() if m.count}, self.opt.device)
        if out:
            out["ctkd_lambda"] = self.lam
        return out

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state):
        self.module.load_state_dict(state)
