#!/usr/bin/env bash
# The main job (creating and installing .venv on first use). Extra arguments are flags of
# scripts/model_tour.py, e.g. scripts/demo.sh --checkpoint models/cerebro_small
source "$(dirname "$0")/setup_venv.sh"
exec .venv/bin/python scripts/model_tour.py "$@"
