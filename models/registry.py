"""Model registry: `model_dict[name](num_classes=N)` as in RepDistiller, plus the input size of each name."""
from helper.registry import Registry

model_dict = Registry("model")
input_size = {}


def register_model(name, size=32):
    """Register `fn` under `name`; `size` is the square input resolution the network expects."""
    def wrap(fn):
        fn = model_dict.register(name)(fn)
        input_size[name] = size
        return fn
    return wrap


def build_model(name, num_classes):
    """Build a registered model, failing with one line that lists the known names."""
    return model_dict.lookup(name)(num_classes=num_classes)
