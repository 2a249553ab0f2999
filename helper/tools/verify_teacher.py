"""`python -m helper.verify_teacher FILE ARCH`: check a teacher file loads strictly into ARCH (100 classes)."""
import argparse

from helper.runs.files import extract_state_dict, file_sha256, load_checkpoint, load_weights
from models import build_model


def verify(path, arch, num_classes=100):
    """Load `path` into `arch` strictly; returns the file's sha256 for the record."""
    load_weights(build_model(arch, num_classes), extract_state_dict(load_checkpoint(path)), path, arch)
    return file_sha256(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check that a teacher file loads strictly into a network of this "
                                                 "repository (100 classes); print its sha256.")
    parser.add_argument("file", help="the checkpoint ({'model': state_dict}, a state_dict, a torchvision file)")
    parser.add_argument("arch", help="the network name (models.model_dict), e.g. resnet32x4")
    args = parser.parse_args(argv)
    print(f"ok {args.arch} {args.file} sha256 {verify(args.file, args.arch)}")


if __name__ == "__main__":
    from helper.options import run_cli
    run_cli(main)
