"""Train a network from scratch with cross-entropy (RepDistiller's train_teacher.py, same flags and defaults).

Multi-GPU: `torchrun --nproc_per_node=N train_teacher.py ...` (DDP; --batch_size is per process, see README).
"""
import argparse
import logging
import os

import torch

from dataset import build_loaders
from helper import distributed, fast
from helper.assembly import check_input_size, describe_data
from helper.errors import NonFiniteLossError, UserError
from helper.logger import RunLogger, attach_run_log, detach_run_log
from helper.loops import LossStep, cross_entropy
from helper.options import add_training_args, apply_default_lr, finish_training_args, run_cli
from helper.protocol import run_protocol
from helper.run import Trainee, fit, is_main_process, purge_step, resume_checkpoint, start_writing
from helper.run_folder import RunFolder, StartupLines
from helper.util import set_seed
from helper.weights import constant_weights
from models import build_model, model_dict

log = logging.getLogger("kd")


def parse_option(argv=None):
    parser = argparse.ArgumentParser(description="Train a teacher network (cross-entropy only).")
    add_training_args(parser)
    parser.add_argument("--model", type=str, default="resnet110", help="network name from models.model_dict")
    parser.add_argument("--model_path", type=str, default="./save/models", help="where run folders go")
    parser.add_argument("--tb_path", type=str, default="./save/tensorboard", help="where TensorBoard logs go")
    fast.add_fast_args(parser)
    opt = parser.parse_args(argv)
    if opt.model not in model_dict:
        raise UserError(f"unknown --model {opt.model!r}; choose one of: {', '.join(sorted(model_dict))}")
    apply_default_lr(opt, opt.model)
    finish_training_args(opt)
    fast.check_fast_args(opt)
    opt.model_name = f"{opt.model}_{opt.dataset}_lr_{opt.learning_rate}_decay_{opt.weight_decay}_trial_{opt.trial}"
    opt.save_folder = os.path.join(opt.model_path, opt.model_name)
    opt.tb_folder = os.path.join(opt.tb_path, opt.model_name)
    return opt


def main(argv=None):
    startup = StartupLines().start()  # the description lines, copied into train.log
    try:
        return train(parse_option(argv), startup)
    finally:
        startup.stop()


def train(opt, startup):
    """Train the teacher of the options; returns its RunState. Every check (run folder, resume) comes before the
    first write."""
    distributed.setup(opt)
    set_seed(opt.seed)
    data = build_loaders(opt)
    describe_data(opt, data)
    check_input_size(opt.model, data)
    model = build_model(opt.model, data.num_classes).to(opt.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    scaler = fast.grad_scaler(opt)
    model, _ = fast.prepare_models(opt, model)
    log.info("%s from scratch: %d epochs, lr %g (%s); %s", opt.model, opt.epochs, opt.learning_rate,
             opt.lr_schedule, fast.describe(opt))
    folder = RunFolder(opt.save_folder)
    handler = None
    try:
        distributed.together(lambda: claim(folder, opt))
        ckpt = resume_checkpoint(opt, opt.save_folder, opt.model, "train_teacher", model, optimizer, scaler)
        if is_main_process():
            start_writing(folder, opt, ckpt)
            handler = attach_run_log(opt.save_folder)
            startup.copy_to(handler)
        startup.stop()
        logger = RunLogger(opt.save_folder, opt.tb_folder, enabled=is_main_process(), purge_step=purge_step(opt, ckpt))

        def compute(batch, teachers, ctx):
            logits = model(batch.images)
            return logits, {"cls": cross_entropy(logits, batch.targets)}

        compute = fast.wrap_step(compute, opt)
        if opt.distributed:  # every parameter reaches the loss: no search for unused ones
            compute = distributed.wrap(LossStep(compute, [model]), opt)
        trainee = Trainee(opt, arch=opt.model, num_classes=data.num_classes, model=model, optimizer=optimizer,
                          compute=compute, weights=constant_weights(cls=1.0), train_modules=[model],
                          folder=opt.save_folder, logger=logger, val_loader=data.val_loader,
                          script="train_teacher", protocol=run_protocol(opt), scaler=scaler)
        if ckpt is not None:
            trainee.resume_from(ckpt)
        fit([trainee], data.train_loader, device=opt.device, seed=opt.seed, sampler=data.train_sampler,
            no_progress=opt.no_progress)
    finally:
        folder.release()
        if handler is not None:
            detach_run_log(handler)
    if opt.plot and is_main_process():
        from helper.plot import plot_each_run  # matplotlib only when asked for
        plot_each_run([opt.save_folder], log)
    if trainee.failed:
        error = NonFiniteLossError(trainee.failed)
        error.logged = True
        raise error
    log.info("best accuracy: %.2f (epoch %d); checkpoints in %s", trainee.state.best_acc, trainee.state.best_epoch,
             opt.save_folder)
    return trainee.state


def claim(folder, opt):
    """Lock the run folder and check what an earlier run left there (rank 0); writes nothing but the lock and the
    folders."""
    if is_main_process():
        folder.claim(opt.tb_folder, bool(opt.resume), opt.overwrite)


if __name__ == "__main__":
    run_cli(main)
