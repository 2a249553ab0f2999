"""Running averages and top-k accuracy of the training loop."""
import torch


class AverageMeter:
    """Running average of a scalar; `update` accepts floats or device tensors without a host sync."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.sum = 0.0
        self.count = 0

    def update(self, val, n=1):
        if torch.is_tensor(val):
            val = val.detach().float()
        self.sum = self.sum + val * n
        self.count += n

    @property
    def avg(self):
        total = self.sum.item() if torch.is_tensor(self.sum) else self.sum
        return total / max(self.count, 1)


def accuracy(output, target, topk=(1,)):
    """Top-k accuracies in percent, as tensors on the logits' device. output [B, C], target [B]."""
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, dim=1).indices
    correct = pred.eq(target.view(-1, 1))
    batch = target.shape[0]
    return [correct[:, :min(k, maxk)].any(dim=1).float().sum() * (100.0 / batch) for k in topk]


def meters_state(meters):
    """{name: (sum, count)} of some AverageMeters, to continue them exactly after a restart (sums keep their dtype)."""
    return {name: (meter.sum, meter.count) for name, meter in meters.items()}


def restore_meters(state, meters):
    """Put back the sums and counts of meters_state into `meters` (a dict or defaultdict of AverageMeters)."""
    for name, (total, count) in state.items():
        meters[name].sum, meters[name].count = total, count
    return meters
