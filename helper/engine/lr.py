"""Learning-rate schedules as pure functions of the epoch (RepDistiller's step decay, cosine), and setting them."""
import math

from helper.errors import UserError


def parse_decay_epochs(text):
    """'150,180,210' -> [150, 180, 210], with a one-line error naming the flag."""
    try:
        return [int(e) for e in str(text).split(",") if e.strip()]
    except ValueError:
        raise UserError(f"--lr_decay_epochs must be comma-separated integers, got {text!r}") from None


def step_lr(epoch, base_lr, decay_epochs, decay_rate):
    """RepDistiller's step schedule: lr * rate^(number of milestones strictly below `epoch`, 1-based)."""
    steps = sum(1 for milestone in decay_epochs if epoch > milestone)
    return base_lr * (decay_rate ** steps)


def cosine_lr(epoch, base_lr, total_epochs, min_lr=0.0):
    """Cosine annealing evaluated at the start of 1-based `epoch`."""
    progress = (epoch - 1) / max(total_epochs, 1)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


def lr_at_epoch(epoch, opt):
    """Learning rate for 1-based `epoch` from the options (a pure function of the epoch)."""
    if getattr(opt, "lr_schedule", "step") == "cosine":
        return cosine_lr(epoch, opt.learning_rate, opt.epochs)
    return step_lr(epoch, opt.learning_rate, opt.lr_decay_epochs, opt.lr_decay_rate)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
