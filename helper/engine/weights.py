"""Weights of the named loss terms: base weights from -r/-a/-b, times per-term schedules and plug-in multipliers."""


def is_task_term(name):
    """The classification terms ("cls", and "cls_<view>" of methods with several views); all others distil."""
    return name == "cls" or name.startswith("cls_")


class TermWeights:
    """cls -> gamma (-r), div -> alpha (-a), any other term -> beta (-b) unless the method overrides it.

    Calling it with (epoch, iteration in epoch, iterations per epoch) gives the weights of that step: the base
    weight times the method's per-term schedule (e.g. DKD's warm-up) times the plug-ins' multipliers
    ("task" on the classification terms, "distill" on the others; e.g. --mimic_schedule).
    """

    def __init__(self, opt, overrides=None, schedules=None, plugins=()):
        self.fixed = {"cls": opt.gamma, "div": opt.alpha}
        self.fixed.update(overrides or {})
        self.beta = opt.beta
        self.schedules = schedules or {}
        self.plugins = list(plugins)

    def __getitem__(self, name):
        return self.fixed.get(name, self.beta)

    def __call__(self, epoch, iteration, iters_per_epoch):
        task = distill = 1.0
        for plugin in self.plugins:
            factors = plugin.weight_multipliers(epoch, iteration, iters_per_epoch)
            task *= factors.get("task", 1.0)
            distill *= factors.get("distill", 1.0)
        per_term = {k: f(epoch, iteration, iters_per_epoch) for k, f in self.schedules.items()}
        return StepWeights(self, task, distill, per_term)


class StepWeights:
    """The weights of one step: base weight x schedule multipliers."""

    def __init__(self, base, task, distill, per_term):
        self.base, self.task, self.distill, self.per_term = base, task, distill, per_term

    def __getitem__(self, name):
        factor = self.task if is_task_term(name) else self.distill
        return self.base[name] * factor * self.per_term.get(name, 1.0)


def constant_weights(**weights):
    """A weights callable for a fixed {term: weight} (teachers, init stages)."""
    return lambda epoch, iteration, iters_per_epoch: weights
