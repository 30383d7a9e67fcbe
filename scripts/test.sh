#!/usr/bin/env bash
# Runs the test suite on the JAX CPU backend (creating and installing .venv on first use).
# Extra arguments go to pytest, e.g. scripts/test.sh -k convert -x
source "$(dirname "$0")/setup_venv.sh"
exec .venv/bin/python -m pytest "$@"
