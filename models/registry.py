"""Model registry: `model_dict[name](num_classes=N)` as in RepDistiller, plus the input size of each name."""
from helper.errors import UserError

model_dict = {}
input_size = {}


def register_model(name, size=32):
    """Register `fn` under `name`; `size` is the square input resolution the network expects."""
    def wrap(fn):
        if name in model_dict:
            raise ValueError(f"model {name!r} registered twice")
        model_dict[name] = fn
        input_size[name] = size
        return fn
    return wrap


def build_model(name, num_classes):
    """Build a registered model, failing with one line that lists the known names."""
    if name not in model_dict:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(sorted(model_dict))}")
    return model_dict[name](num_classes=num_classes)
