"""`python -m helper.verify_teacher FILE ARCH`: check a teacher file loads strictly into ARCH (100 classes)."""
import sys

from helper.runs.files import extract_state_dict, file_sha256, load_checkpoint, load_weights
from models import build_model


def verify(path, arch, num_classes=100):
    """Load `path` into `arch` strictly; returns the file's sha256 for the record."""
    load_weights(build_model(arch, num_classes), extract_state_dict(load_checkpoint(path)), path, arch)
    return file_sha256(path)


def main(argv=None):
    path, arch = (sys.argv[1:] if argv is None else argv)[:2]
    print(f"ok {arch} {path} sha256 {verify(path, arch)}")


if __name__ == "__main__":
    from helper.options import run_cli
    run_cli(main)
