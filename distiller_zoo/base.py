"""The seam between the shared training loop and a distillation method.

A method is one file in distiller_zoo/ holding (a) its loss with the peer's class interface
(e.g. `Attention(p=2).forward(g_s, g_t)`) and (b) a `Distiller` subclass registered with
`@register_distiller("name")`. The Distiller declares what it needs (`Needs`), adds its own
flags, builds its extra modules from probed feature shapes, and returns named loss terms.
The loop (helper/engine/) only reads these declarations; it never looks at a method's name.
"""
from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, FrozenSet, List, Optional, Tuple

import torch
from torch import nn

from helper.errors import UserError
from helper.registry import Registry, named


def require_method(model, name, method, role):
    """One line when `model` lacks a method `name` that the distillation method reads from it (the repository's own
    networks have get_feat_modules and get_bn_before_relu; torchvision:/timm: networks do not)."""
    if not callable(getattr(model, name, None)):
        raise UserError(f"--distill {method} needs the {role}'s {name}(), which {type(model).__name__} does not "
                        f"have; pick a network of this repository as the {role} (models/), or another method")


@dataclass(frozen=True)
class Needs:
    """What a method consumes from the loop."""
    feats: bool = False           # call both models with is_feat=True
    preact: bool = False          # ... and preact=True (pre-activation stage outputs)
    index: bool = False           # batches carry dataset indices [B]
    contrast_index: bool = False  # the method draws contrast indices [B, K+1] itself, with ctx.generator (implies index)
    full_batches: bool = False    # the method skips the last partial batch of an epoch
    init_stage: bool = False      # an init stage of --init_epochs runs before distillation
    teacher_preact: Optional[bool] = None  # the teacher's preact when it differs from the student's (ReviewKD)
    strong_view: bool = False     # batches carry a strongly augmented second view; out_s.strong / out_t.strong

    @property
    def teacher_needs(self):
        """The Needs of the teacher's forward (its own preact when teacher_preact is set)."""
        if self.teacher_preact is None:
            return self
        return Needs(feats=self.feats or self.teacher_preact, preact=self.teacher_preact, strong_view=self.strong_view)


@dataclass
class ModelOutput:
    """One network's output on a batch: `feats` as `model(x, is_feat=True)` returns them, or None."""
    logits: torch.Tensor                      # [B, num_classes]
    feats: Optional[List[torch.Tensor]] = None
    strong: Optional["ModelOutput"] = None    # the same network's output on batch.images_strong (Needs.strong_view)

    @property
    def stage_feats(self):
        """Outputs of the residual stages / conv blocks: RepDistiller's feat[1:-1]."""
        return self.feats[1:-1]

    @property
    def last_stage(self):
        """Output of the last stage, before pooling: RepDistiller's feat[-2]. [B, C, H, W]"""
        return self.feats[-2]

    @property
    def pooled(self):
        """Pooled penultimate vector fed to the classifier: RepDistiller's feat[-1]. [B, D]"""
        return self.feats[-1]

    @property
    def all_but_pooled(self):
        """Stem and stage outputs: RepDistiller's feat[:-1]."""
        return self.feats[:-1]


@dataclass
class Batch:
    """A training batch in a uniform shape, whatever the loader returned."""
    images: torch.Tensor                      # [B, C, H, W]
    targets: torch.Tensor                     # [B]
    index: Optional[torch.Tensor] = None      # [B] dataset indices
    contrast_idx: Optional[torch.Tensor] = None  # [B, K+1], positive first (tests; methods draw their own)
    images_strong: Optional[torch.Tensor] = None  # [B, C, H, W] strongly augmented view (Needs.strong_view)

    @classmethod
    def from_loader(cls, items, device):
        """Accept (x, y), (x, y, idx), (x, y, idx, contrast_idx) or a dict of the fields; move it to `device`."""
        if isinstance(items, dict):
            return cls(**{k: v.to(device, non_blocking=True) for k, v in items.items()})
        tensors = [t.to(device, non_blocking=True) for t in items]
        return cls(*tensors)

    def __len__(self):
        return self.targets.shape[0]


@dataclass
class StepContext:
    """What the loop and the plug-ins give a method's `loss` for one step (no side channel through Batch).

    temperature: the CTKD plug-in's learnable temperature for this batch ([1] or [B, 1], float32, with a graph
    into the temperature module), or None; `temp(default)` picks it or the method's own fixed T.
    logit_transforms: functions applied, in order, to logits before a temperature divides them (the logit
    standardisation plug-in); `distill_logits(z)` applies them. generator: the method's own random stream (on the
    training device), reseeded every epoch from the run's seed, independent of the data stream.
    """
    epoch: int = 1                      # 1-based
    iteration: int = 0                  # 0-based, within the epoch
    iters_per_epoch: int = 1
    temperature: Optional[torch.Tensor] = None
    logit_transforms: Tuple[Callable[[torch.Tensor], torch.Tensor], ...] = ()
    generator: Optional[torch.Generator] = None

    def temp(self, default):
        """The learnable temperature when a temperature plug-in is on, else `default` (a float)."""
        return default if self.temperature is None else self.temperature

    def distill_logits(self, logits):
        """`logits` [..., K] after the logit plug-ins' transforms (identity without any)."""
        for transform in self.logit_transforms:
            logits = transform(logits)
        return logits


@dataclass
class ProbeShapes:
    """Features of both networks on a dummy batch, taken once at start-up to size extra modules."""
    feat_s: List[torch.Tensor]
    feat_t: List[torch.Tensor]
    logit_s: torch.Tensor
    logit_t: torch.Tensor
    n_data: int          # training-set size (memory banks)
    num_classes: int
    train_targets: Optional[torch.Tensor] = None  # [n_data] labels of the training set (contrast sampling)

    @property
    def out_s(self):
        """The student's probe output, with ModelOutput's named views (stage_feats, pooled, ...)."""
        return ModelOutput(self.logit_s, self.feat_s)

    @property
    def out_t(self):
        """The teacher's probe output, with ModelOutput's named views."""
        return ModelOutput(self.logit_t, self.feat_t)


class Distiller(nn.Module):
    """Base class: owns a method's criterion and trainable modules.

    Subclasses set `needs`, may add flags in `add_args`, build modules in `__init__(opt, probe,
    student, teacher)`, and implement `loss`, returning named terms that the loop weights with
    `-b/--beta` (per-term weights via `term_weights`). Parameters with requires_grad are trained with
    the student in the main stage. Buffers (e.g. memory banks) are saved in checkpoints.
    """
    needs: ClassVar[Needs] = Needs()
    name: ClassVar[str] = ""
    # Plug-in kinds the method's own terms read from StepContext: "temperature" (ctx.temp) and/or
    # "logit_transform" (ctx.distill_logits). A plug-in of a kind no term reads is refused at start-up.
    consumes: ClassVar[FrozenSet[str]] = frozenset()
    # train_student's shared flags the method reads besides its own (add_args): with those, the flags that define
    # the method's protocol (they split tables and name run folders; other methods' flags do not).
    reads: ClassVar[FrozenSet[str]] = frozenset()
    # False for a method with no term of its own (KD: the loop's KL term is the method): -b would weight nothing.
    has_terms: ClassVar[bool] = True
    # Flags that `run_tag` already spells in the run folder's name (not repeated as flag=value).
    tag_flags: ClassVar[FrozenSet[str]] = frozenset()

    def __init__(self, opt, probe: ProbeShapes, student: nn.Module, teacher: nn.Module):
        super().__init__()

    @classmethod
    def add_args(cls, parser):
        """Add the method's own flags (the peers' names and defaults) to `parser`."""

    def loss(self, out_s: ModelOutput, out_t: ModelOutput, batch: Batch, ctx: StepContext) -> Dict[str, torch.Tensor]:
        """Named distillation terms for one batch; {} for a method with no term of its own (KD)."""
        raise NotImplementedError

    def eval_model(self, student: nn.Module) -> Optional[nn.Module]:
        """The module that maps images to logits for validation and checkpoints' reported accuracy, when it is not
        the student itself (SimKD: the student's features through the projector and the teacher's classifier)."""
        return None

    @classmethod
    def run_tag(cls, opt) -> str:
        """A tag for the run folder's name when the method's flags make a variant of it ("" for none)."""
        return ""

    def term_weights(self, opt) -> Dict[str, float]:
        """Weight of each term returned by `loss`; by default every term is weighted by -b/--beta."""
        return {}

    def term_schedules(self, opt) -> Dict[str, Callable[[int, int, int], float]]:
        """Per-term weight multipliers as pure functions of (epoch, iteration, iterations per epoch)."""
        return {}

    def init_lr(self, opt) -> float:
        """Learning rate of the init stage (RepDistiller: the main --learning_rate)."""
        return opt.learning_rate

    def param_groups(self, opt) -> List[dict]:
        """Optimizer parameter groups of the method's trainable modules (default: one group)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params}] if params else []

    # Init stage (AB, FT, FSP): trained for --init_epochs before distillation, through the same loop.
    def init_modules(self, student: nn.Module) -> List[nn.Module]:
        """Modules trained in the init stage; only called when needs.init_stage."""
        raise NotImplementedError

    def init_loss(self, out_s: ModelOutput, out_t: ModelOutput, batch: Batch, ctx: StepContext) -> torch.Tensor:
        """Scalar loss of the init stage."""
        raise NotImplementedError

    def on_init_end(self):
        """Called once when the init stage ends (e.g. freeze a module trained only there)."""


distiller_registry = Registry("--distill", on_register=named)


def register_distiller(name):
    """Class decorator: make a Distiller subclass available as `--distill name`."""
    return distiller_registry.register(name)


def get_distiller_class(name):
    """Look up `--distill name`, failing with one line that lists the methods."""
    return distiller_registry.lookup(name)
