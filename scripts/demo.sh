#!/usr/bin/env bash
# The main job (creating and installing .venv on first use): builds the synthetic cohort,
# trains CEReBrO small on it, evaluates the best model on unseen subjects, quantizes it
# to INT8 and compares sizes and accuracy. Extra arguments are flags of cerebro_jax.main,
# e.g. --config.num_epochs=5. Run again with the same workdir to resume.
source "$(dirname "$0")/setup_venv.sh"
workdir="${WORKDIR:-runs/default}"
.venv/bin/python -m cerebro_jax.main --config=configs/default.py --workdir="$workdir" "$@"
echo
echo "INT8 quantization (the paper's dynamic INT8), test split:"
.venv/bin/python scripts/quantize.py --checkpoint="$workdir/model" --output="$workdir/model_int8" \
  --eval_data="$workdir/data" --overwrite
echo
echo "Results: $workdir/eval (metrics.json, metrics.md, plots), $workdir/model_int8/quantization.md"
echo "Predict: .venv/bin/python -m cerebro_jax.predict --checkpoint $workdir/model_int8 --record REC --output OUT.csv"
