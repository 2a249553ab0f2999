"""`python -m helper.verify_teacher FILE ARCH`: check a teacher file loads strictly into ARCH (100 classes)."""
import hashlib
import sys

from helper.errors import UserError
from helper.util import extract_state_dict, load_checkpoint, load_weights
from models import build_model


def verify(path, arch, num_classes=100):
    """Load `path` into `arch` strictly; returns the file's sha256 for the record."""
    load_weights(build_model(arch, num_classes), extract_state_dict(load_checkpoint(path)), path, arch)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


if __name__ == "__main__":
    try:
        digest = verify(sys.argv[1], sys.argv[2])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"ok {sys.argv[2]} {sys.argv[1]} sha256 {digest}")
