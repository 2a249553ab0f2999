"""README's "How to add a method": one Distiller subclass with one registration makes a working --distill."""
import torch
import torch.nn.functional as F
from torch import nn

import train_student
from distiller_zoo.base import Distiller, Needs, distiller_registry, register_distiller
from tests.test_methods_train_step import build, one_batch, snapshot, changed
from helper.loops import train_epoch
from distiller_zoo.KD import DistillKL


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

        def loss(self, out_s, out_t, batch):
            return {"toy": self.criterion(self.proj(out_s.pooled), self.scale * out_t.pooled)}


def test_a_registered_method_gets_its_flags_and_trains_through_the_shared_loop():
    register_toy()
    opt = train_student.parse_option(["--path_t", "t.pth", "--distill", "toy_pooled_mse", "--toy_scale", "0.5",
                                      "--device", "cpu"])
    assert opt.toy_scale == 0.5 and opt.beta == 1.0  # unknown methods default to -r 1 -a 0 -b 1
    opt, teacher, student, distiller = build("toy_pooled_mse", "resnet8x4", "vgg8")
    before_s, before_d = snapshot(student), snapshot(distiller)
    weights = train_student.TermWeights(opt, distiller.term_weights(opt))
    compute = train_student.distill_step(student, teacher, distiller, DistillKL(opt.kd_T), weights)
    optimizer = torch.optim.SGD([{"params": list(student.parameters())}] + distiller.param_groups(opt), lr=0.05)
    stats = train_epoch(1, one_batch(distiller.needs), compute, optimizer, weights, opt, [student, distiller],
                        [teacher])
    assert "loss_toy" in stats
    assert changed(before_s, student) and changed(before_d, distiller)
