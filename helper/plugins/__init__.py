"""Plug-ins: features that cut across methods (a learnable temperature, a logit transform, a loss-weight schedule,
an optimizer), each one file here and one line below, applied by the loop to any method that consumes its kind.

A plug-in is a `Plugin` subclass registered with `@register_plugin(name)`. It says which `kind` it is, adds its
flags, says from the options whether it is on (`enabled`), and may:
- own trainable modules (`modules()`): trained with the student's optimizer and lr schedule, wrapped in the same
  DDP module, saved in checkpoints under `checkpoint_key`;
- act per epoch (`start_epoch`), per step before the method's loss (`prepare(ctx, out_s, out_t)`: set
  ctx.temperature, append to ctx.logit_transforms), or on the loss weights (`weight_multipliers`: a factor for the
  task terms and one for the distillation terms);
- take over the optimizer (`build_optimizer`) and the backward pass (`backward_and_step`);
- report scalars for the logs once per epoch (`scalars`).
Consumption: the KL term (weight -a) reads a temperature and a logit transform; a method's own terms read what its
Distiller lists in `consumes`. A "temperature" or "logit_transform" plug-in that nothing reads is refused at start-up
with one line (it would change nothing); "weights" and "optimizer" plug-ins apply to every method.
"""
from typing import ClassVar, Dict, List

from torch import nn

from helper.errors import UserError
from helper.registry import Registry, named

KINDS = ("temperature", "logit_transform", "weights", "optimizer")


class Plugin:
    """Base class: every hook does nothing."""
    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    checkpoint_key: ClassVar[str] = ""  # key of this plug-in's state in checkpoints (default: "plugin_<name>")
    switch: ClassVar[str] = ""          # the flag that turns it on, for messages ("--have_mlp 1")
    tag_flags: ClassVar[frozenset] = frozenset()  # flags its `tag` spells in run folder names (not repeated)

    def __init__(self, opt, probe):
        self.opt = opt

    @classmethod
    def add_args(cls, parser):
        """The plug-in's flags."""

    @classmethod
    def enabled(cls, opt) -> bool:
        """Whether the options switch this plug-in on."""
        return False

    @classmethod
    def tag(cls, opt) -> str:
        """A short tag for the run folder's name (e.g. "ctkd:global")."""
        return cls.name

    @classmethod
    def check(cls, opt):
        """Refuse incompatible options at start-up (UserError); called before anything is built."""

    def modules(self) -> List[nn.Module]:
        """Trainable modules, trained with the student (same optimizer, lr schedule, DDP module)."""
        return []

    def start_epoch(self, epoch):
        """Called at the start of every epoch of the main stage (1-based)."""

    def prepare(self, ctx, out_s, out_t):
        """Per step, before the losses: may set ctx.temperature or append to ctx.logit_transforms."""

    def weight_multipliers(self, epoch, iteration, iters_per_epoch) -> Dict[str, float]:
        """{"task": m, "distill": m}: factors on the task terms (cls...) and on the distillation terms."""
        return {}

    def build_optimizer(self, param_groups, opt):
        """An optimizer replacing the student's SGD, or None."""
        return None

    def backward_and_step(self, task_loss, distill_loss, optimizer):
        """Backpropagate and step; return False to let the loop do (task + distill).backward(); optimizer.step()."""
        return False

    def epoch_state(self):
        """What the plug-in accumulates within an epoch (e.g. meters for its scalars), for a step checkpoint."""
        return {}

    def load_epoch_state(self, state):
        """Put back epoch_state() after start_epoch, when a run continues an epoch from a step checkpoint."""

    def scalars(self) -> Dict[str, float]:
        """Epoch summaries for the logs (a collective under torchrun: called on every rank)."""
        return {}

    def state_dict(self):
        return [m.state_dict() for m in self.modules()]

    def load_state_dict(self, state):
        for module, module_state in zip(self.modules(), state):
            module.load_state_dict(module_state)

    @property
    def key(self):
        return self.checkpoint_key or f"plugin_{self.name}"


def check_kind(name, cls):
    if cls.kind not in KINDS:
        raise ValueError(f"plug-in {name!r} has kind {cls.kind!r}; choose one of {KINDS}")
    named(name, cls)


plugin_registry = Registry("plug-in", on_register=check_kind)


def register_plugin(name):
    """Class decorator: make a Plugin subclass available to every run."""
    return plugin_registry.register(name)


def add_plugin_args(parser):
    for name in sorted(plugin_registry):
        plugin_registry[name].add_args(parser)


def enabled_plugins(opt):
    """The classes of the plug-ins the options switch on, in registry order."""
    return [cls for name, cls in plugin_registry.items() if cls.enabled(opt)]


def consumed_kinds(opt, distiller_cls):
    """Plug-in kinds the run's terms read: the KL term's when -a is not 0, plus the method's `consumes`."""
    kinds = set(distiller_cls.consumes)
    if opt.alpha != 0:
        kinds |= {"temperature", "logit_transform"}
    return kinds | {"weights", "optimizer"}


def check_plugins(opt, distiller_cls):
    """Refuse, with one line, a plug-in whose kind no term of this run reads."""
    kinds = consumed_kinds(opt, distiller_cls)
    for cls in enabled_plugins(opt):
        cls.check(opt)
        if cls.kind not in kinds:
            raise UserError(f"{cls.switch}: --distill {distiller_cls.name} with -a {opt.alpha:g} has no loss term "
                            f"that reads a {cls.kind.replace('_', ' ')}; drop {cls.switch}, or weight the KL term "
                            "with -a")


def build_plugins(opt, probe):
    return [cls(opt, probe) for cls in enabled_plugins(opt)]


from . import ctkd, dot, logit_stand, mimic  # noqa: E402,F401  (registration, one line per plug-in)
