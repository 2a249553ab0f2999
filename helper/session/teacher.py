"""A teacher run: a network trained from scratch with cross-entropy (train_teacher.py), as a run of the session."""
import logging

import torch

from dataset import build_loaders
from helper.engine import distributed, fast
from helper.engine.step import ClassifierStep, LossStep
from helper.engine.trainee import Trainee
from helper.engine.weights import constant_weights
from helper.runs.protocol import run_protocol
from helper.runs.resume import resume_checkpoint
from helper.session import Plan, Stream, describe_data
from helper.student.teacher import check_input_size
from helper.util import set_seed
from models import build_model

log = logging.getLogger("kd")


class TeacherRun:
    """The network of --model, its SGD and fp16 scaler, built before any file is touched."""
    script = "train_teacher"
    label = ""

    def __init__(self, opt, data):
        self.opt, self.data, self.arch = opt, data, opt.model
        self.folder = opt.save_folder
        self.tb_folder = opt.tb_folder
        model = build_model(opt.model, data.num_classes).to(opt.device)
        self.optimizer = torch.optim.SGD(model.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                                         weight_decay=opt.weight_decay)
        self.scaler = fast.grad_scaler(opt)
        self.model, _ = fast.prepare_models(opt, model)

    def resume(self, allow_fresh=False):
        return resume_checkpoint(self.opt, self.folder, self.arch, self.script, self.model, self.optimizer,
                                 self.scaler, allow_fresh=allow_fresh)

    def protocol(self):
        return run_protocol(self.opt)

    def trainees(self, record, resumed):
        opt = self.opt
        compute = fast.wrap_step(ClassifierStep(self.model), opt)
        if opt.distributed:  # every parameter reaches the loss: no search for unused ones
            compute = distributed.wrap(LossStep(compute, [self.model]), opt)
        return Trainee(opt, arch=self.arch, num_classes=self.data.num_classes, model=self.model,
                       optimizer=self.optimizer, compute=compute, weights=constant_weights(cls=1.0),
                       train_modules=[self.model], record=record, val_loader=self.data.val_loader,
                       scaler=self.scaler), None


def teacher_plan(opt):
    """The Plan of one teacher run: the process, the data, the network."""
    distributed.setup(opt)
    set_seed(opt.seed)
    data = build_loaders(opt)
    describe_data(opt, data)
    check_input_size(opt.model, data)
    spec = TeacherRun(opt, data)
    log.info("%s from scratch: %d epochs, lr %g (%s); %s", opt.model, opt.epochs, opt.learning_rate,
             opt.lr_schedule, fast.describe(opt))
    return Plan([spec], Stream(loader=data.train_loader, sampler=data.train_sampler, device=opt.device,
                               seed=opt.seed, no_progress=opt.no_progress, plot=opt.plot))

