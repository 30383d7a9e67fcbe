#!/usr/bin/env bash
# Does pre-training help? On the synthetic cohort (unseen test subjects), CEReBrO small:
#   1. masked-patch pre-training (configs/pretrain.py) on the training split's windows
#   2. frozen fine-tuning (patch embedding + head) from the pre-trained encoder
#   3. frozen fine-tuning from a random encoder (scripts/init_model.py, same seed)
#   4. unfrozen fine-tuning from the pre-trained encoder
#   5. training from scratch (configs/default.py, the main job's run)
# Fine-tuning runs use configs/default.py otherwise; all share one prepared dataset.
# About 40 minutes on 2 CPU cores. Results: $WORKDIR/*/eval/metrics.md and
# $WORKDIR/pretrain/eval/pretrain_metrics.md, summed up in $WORKDIR/summary.md.
set -euo pipefail
source "$(dirname "$0")/setup_venv.sh"
root="${WORKDIR:-runs/pretraining_experiment}"
main() { .venv/bin/python -m cerebro_jax.main --config=configs/$1 --workdir="$root/$2" "${@:3}"; }
main pretrain.py pretrain
data="--config.data.dir=$root/pretrain/data"
.venv/bin/python scripts/init_model.py --output="$root/random_encoder" --overwrite
main default.py frozen_pretrained $data --config.train_mode=frozen --config.init_from="$root/pretrain/model"
main default.py frozen_random $data --config.train_mode=frozen --config.init_from="$root/random_encoder"
main default.py unfrozen_pretrained $data --config.train_mode=unfrozen --config.init_from="$root/pretrain/model"
main default.py scratch $data
.venv/bin/python - "$root" <<'PY'
import json, sys
root = sys.argv[1]
lines = ['| run | test SBP MAE | test DBP MAE | test SBP R^2 | test DBP R^2 | best epoch |',
         '|---|---|---|---|---|---|']
for run in ('frozen_pretrained', 'frozen_random', 'unfrozen_pretrained', 'scratch'):
  test = json.load(open(f'{root}/{run}/eval/metrics.json'))['test']
  best = json.load(open(f'{root}/{run}/train_summary.json'))['best_epoch']
  lines.append(f"| {run} | {test['sbp']['mae']:.2f} | {test['dbp']['mae']:.2f} | "
               f"{test['sbp']['r2']:.3f} | {test['dbp']['r2']:.3f} | {best} |")
summary = ('Fine-tuning on unseen subjects (mmHg):\n\n' + '\n'.join(lines) +
           '\n\nPre-training, held-out reconstruction:\n\n' +
           open(f'{root}/pretrain/eval/pretrain_metrics.md').read())
open(f'{root}/summary.md', 'w').write(summary)
print(summary)
PY
