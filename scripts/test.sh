#!/usr/bin/env bash
# Set up what is missing, then run the test suite on the CPU, less the long end-to-end tests (DDP, kills: marked
# `long`, run by .ci/run and by `bash scripts/test.sh -m long`). Extra arguments go to pytest; a later -m replaces
# this one (`bash scripts/test.sh -m "long or not long"` runs everything).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q tests -m "not long" "$@"
