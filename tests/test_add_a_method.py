"""README's "How to add a method": one Distiller subclass with one registration makes a working --distill."""
import torch.nn.functional as F
from torch import nn

from distiller_zoo.base import Distiller, Needs, distiller_registry, register_distiller
from tests.student_utils import built, parse, shared_for, train
from tests.test_methods_train_step import changed, one_batch, snapshot


class PooledMSE(nn.Module):
    """A toy loss with a peer-style interface: MSE between projected student and teacher vectors."""

    def forward(self, f_s, f_t):
        return F.mse_loss(f_s, f_t)


def register_toy():
    if "toy_pooled_mse" in distiller_registry:
        return

    @register_distiller("toy_pooled_mse")
    class ToyDistiller(Distiller):
        needs = Needs(feats=True)

        @classmethod
        def add_args(cls, parser):
            parser.add_argument("--toy_scale", type=float, default=1.0, help="scales the teacher vector (1.0)")

        def __init__(self, opt, probe, student, teacher):
            super().__init__(opt, probe, student, teacher)
            self.proj = nn.Linear(probe.feat_s[-1].shape[1], probe.feat_t[-1].shape[1])
            self.criterion = PooledMSE()
            self.scale = opt.toy_scale

        def loss(self, out_s, out_t, batch, ctx):
            return {"toy": self.criterion(self.proj(out_s.pooled), self.scale * out_t.pooled)}


def test_a_registered_method_gets_its_flags_and_trains_through_the_shared_loop():
    register_toy()
    opt = parse("--distill", "toy_pooled_mse", "--toy_scale", "0.5", "--model_s", "vgg8", "--batch_size", "8")
    shared = shared_for("resnet8x4", 10, 64)
    s = built(opt, shared)
    assert opt.toy_scale == 0.5 and (opt.gamma, opt.alpha, opt.beta) == (1.0, 0.0, 1.0)  # no recipe: -r 1 -a 0 -b 1
    before_s, before_d = snapshot(s.student), snapshot(s.distiller)
    stats = train(s, shared, one_batch(s.distiller.needs))
    assert "loss_toy" in stats
    assert changed(before_s, s.student) and changed(before_d, s.distiller)
