"""Train a network from scratch with cross-entropy (RepDistiller's train_teacher.py, same flags and defaults).

Multi-GPU: `torchrun --nproc_per_node=N train_teacher.py ...` (DDP; --batch_size is per process, see README).
"""
import argparse
import logging
import os

import torch

from dataset import build_loaders
from helper import distributed
from helper import fast
from helper.errors import UserError
from helper.logger import RunLogger
from helper.loops import LossStep, cross_entropy
from helper.options import add_training_args, apply_default_lr, finish_training_args, run_cli
from helper.run import RunState, fit, is_main_process, resume, save_options
from helper.util import set_seed
from models import build_model, input_size, model_dict

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
    apply_default_lr(opt, opt.model, log)
    finish_training_args(opt)
    fast.check_fast_args(opt, log)
    opt.model_name = f"{opt.model}_{opt.dataset}_lr_{opt.learning_rate}_decay_{opt.weight_decay}_trial_{opt.trial}"
    opt.save_folder = os.path.join(opt.model_path, opt.model_name)
    opt.tb_folder = os.path.join(opt.tb_path, opt.model_name)
    return opt


def check_input_size(model_name, data):
    if input_size[model_name] != data.input_size:
        raise UserError(f"--model {model_name} expects {input_size[model_name]}px inputs but --dataset gives "
                        f"{data.input_size}px; pick a network for this dataset")


def main(argv=None):
    opt = parse_option(argv)
    distributed.setup(opt)
    set_seed(opt.seed)
    data = build_loaders(opt)
    check_input_size(opt.model, data)
    model = build_model(opt.model, data.num_classes).to(opt.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                                weight_decay=opt.weight_decay)
    model, _ = fast.prepare_models(opt, model)
    log.info(fast.describe(opt))
    if is_main_process():
        os.makedirs(opt.save_folder, exist_ok=True)
    state = RunState()
    if opt.resume:
        path = os.path.join(opt.save_folder, f"{opt.model}_last.pth") if opt.resume == "last" else opt.resume
        state = resume(path, opt.model, model, optimizer, opt)
    save_options(opt, opt.save_folder)
    logger = RunLogger(opt.save_folder, opt.tb_folder, enabled=is_main_process())

    def compute(batch):
        logits = model(batch.images)
        return logits, {"cls": cross_entropy(logits, batch.targets)}

    compute = fast.wrap_step(compute, opt)
    if opt.distributed:  # every parameter reaches the loss: no search for unused ones
        compute = distributed.wrap(LossStep(compute, [model]), opt)
    fit(opt, arch=opt.model, num_classes=data.num_classes, model=model, optimizer=optimizer,
        loaders=(data.train_loader, data.val_loader), compute=compute, weights=lambda *step: {"cls": 1.0},
        train_modules=[model], eval_modules=[], folder=opt.save_folder, logger=logger, state=state,
        train_sampler=data.train_sampler)
    logger.close()
    log.info("best accuracy: %.2f (epoch %d); checkpoints in %s", state.best_acc, state.best_epoch, opt.save_folder)
    return state


if __name__ == "__main__":
    run_cli(main)
