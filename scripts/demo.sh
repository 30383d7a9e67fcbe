#!/usr/bin/env bash
# The main job (creating and installing .venv on first use): builds the synthetic cohort,
# trains CEReBrO small on it, evaluates the best model on unseen subjects and prints the
# report. Extra arguments are flags of cerebro_jax.main, e.g. --config.num_epochs=5.
# Run again with the same workdir to resume an interrupted run.
source "$(dirname "$0")/setup_venv.sh"
workdir="${WORKDIR:-runs/default}"
.venv/bin/python -m cerebro_jax.main --config=configs/default.py --workdir="$workdir" "$@"
echo "Model: $workdir/model (python -m cerebro_jax.predict --checkpoint $workdir/model ...)"
