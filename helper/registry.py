"""One registry for what is picked by name: networks (`model_dict`), methods (`--distill`) and plug-ins."""
from helper.errors import UserError


class Registry(dict):
    """name -> class or function, filled by the `register(name)` decorator; a dict, so RepDistiller's
    `model_dict[name](num_classes=N)` keeps working. `what` names it in messages ("model", "--distill");
    `on_register(name, obj)` may check or annotate what is registered."""

    def __init__(self, what, on_register=None):
        super().__init__()
        self.what, self.on_register = what, on_register

    def register(self, name):
        def wrap(obj):
            if name in self:
                raise ValueError(f"{self.what} {name!r} registered twice")
            if self.on_register is not None:
                self.on_register(name, obj)
            self[name] = obj
            return obj
        return wrap

    def lookup(self, name):
        """The entry `name`, or one line listing the names there are."""
        if name not in self:
            raise UserError(f"unknown {self.what} {name!r}; choose one of: {', '.join(sorted(self))}")
        return self[name]


def named(name, cls):
    """on_register for classes that carry their registered name (`cls.name`)."""
    cls.name = name
