"""The seam between the shared training loop and a distillation method.

A method is one file in distiller_zoo/ holding (a) its loss with the peer's class interface
(e.g. `Attention(p=2).forward(g_s, g_t)`) and (b) a `Distiller` subclass registered with
`@register_distiller("name")`. The Distiller declares what it needs (`Needs`), adds its own
flags, builds its extra modules from probed feature shapes, and returns named loss terms.
`helper/loops.py` only reads these declarations; it never looks at a method's name.
"""
from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, List, Optional

import torch
from torch import nn

from helper.errors import UserError


@dataclass(frozen=True)
class Needs:
    """What a method consumes from the loop."""
    feats: bool = False           # call both models with is_feat=True
    preact: bool = False          # ... and preact=True (pre-activation stage outputs)
    index: bool = False           # batches carry dataset indices [B]
    contrast_index: bool = False  # batches carry contrast indices [B, K+1] (implies index)
    full_batches: bool = False    # the loader drops the last partial batch
    init_stage: bool = False      # an init stage of --init_epochs runs before distillation


@dataclass
class ModelOutput:
    """One network's output on a batch: `feats` as `model(x, is_feat=True)` returns them, or None."""
    logits: torch.Tensor                      # [B, num_classes]
    feats: Optional[List[torch.Tensor]] = None

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
    contrast_idx: Optional[torch.Tensor] = None  # [B, K+1], positive first
    temperature: Optional[torch.Tensor] = None   # learnable temperature ([1] or [B, 1]) set by CTKD, else None
    epoch: int = 0                               # 1-based epoch, for methods with warm-ups

    @classmethod
    def from_loader(cls, items, device):
        """Accept (x, y), (x, y, idx) or (x, y, idx, contrast_idx) and move it to `device`."""
        tensors = [t.to(device, non_blocking=True) for t in items]
        return cls(*tensors)


@dataclass
class ProbeShapes:
    """Features of both networks on a dummy batch, taken once at start-up to size extra modules."""
    feat_s: List[torch.Tensor]
    feat_t: List[torch.Tensor]
    logit_s: torch.Tensor
    logit_t: torch.Tensor
    n_data: int          # training-set size (memory banks)
    num_classes: int

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

    def __init__(self, opt, probe: ProbeShapes, student: nn.Module, teacher: nn.Module):
        super().__init__()

    @classmethod
    def add_args(cls, parser):
        """Add the method's own flags (the peers' names and defaults) to `parser`."""

    def loss(self, out_s: ModelOutput, out_t: ModelOutput, batch: Batch) -> Dict[str, torch.Tensor]:
        """Named distillation terms for one batch; {} for a method with no term of its own (KD)."""
        raise NotImplementedError

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

    def init_loss(self, out_s: ModelOutput, out_t: ModelOutput, batch: Batch) -> torch.Tensor:
        """Scalar loss of the init stage."""
        raise NotImplementedError

    def on_init_end(self):
        """Called once when the init stage ends (e.g. freeze a module trained only there)."""


distiller_registry: Dict[str, type] = {}


def register_distiller(name):
    """Class decorator: make a Distiller subclass available as `--distill name`."""
    def wrap(cls):
        if name in distiller_registry:
            raise ValueError(f"distiller {name!r} registered twice")
        cls.name = name
        distiller_registry[name] = cls
        return cls
    return wrap


def get_distiller_class(name):
    """Look up `--distill name`, failing with one line that lists the methods."""
    if name not in distiller_registry:
        raise UserError(f"unknown --distill {name!r}; choose one of: {', '.join(sorted(distiller_registry))}")
    return distiller_registry[name]
