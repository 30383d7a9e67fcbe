r"""Masked-patch pre-training of CEReBrO (cerebro_jax/trainers/pretrain.py).

  python -m cerebro_jax.main --config=configs/pretrain.py --workdir=runs/pretrain
  python -m cerebro_jax.main --config=configs/pretrain.py:published \
      --config.data.recordings='tuh/**/*.edf' --config.data.sample_rate_hz=256 \
      --config.data.window_seconds=5 --config.data.normalisation=minmax_symmetric \
      --workdir=runs/pretrain_eeg

Built on configs/default.py: the same data, model, batch and epoch fields apply. By
default it pre-trains CEReBrO small on the synthetic cohort's training windows (labels
unused) in about 5 minutes on 2 CPU cores; fine-tune the result with
--config.init_from=runs/pretrain/model. The argument 'published' switches to the later
re-implementation's full published recipe (50 epochs, 3 warm-up, gradient accumulation
x8), for real corpora.
"""

from configs import default


def get_config(arg: str = ''):
  if arg not in ('', 'published'):
    raise ValueError(f"pretrain config argument must be '' or 'published', got {arg!r}")
  config = default.get_config()
  config.objective = 'masked_patches'

  config.pretrain = default.ml_collections.ConfigDict()
  # Fraction of each window's real tokens replaced by the mask token (0.75 is the
  # original code's default; 0.5 the later re-implementation's; the paper's is not public).
  config.pretrain.mask_ratio = 0.5
  # Weight of the visible patches' reconstruction in the loss (masked mean + alpha x
  # visible mean).
  config.pretrain.alpha = 0.1
  # Elementwise loss: 'l2' (the later re-implementation) or 'smooth_l1' (the original's).
  config.pretrain.loss = 'l2'

  # Raw recordings instead of a prepared dataset: comma-separated globs of .edf files and
  # WFDB headers (.hea), or folders; '' = config.data.dir, or the synthetic cohort.
  config.data.recordings = ''
  # Channel names to keep, in this order (case-insensitive); () = every channel of each
  # file. A recording without one of them is skipped and named.
  config.data.channels = ()
  # Rate (Hz) every channel is resampled to, and window length (s): 125 Hz x 10 s is the
  # BP model's input; the EEG pipelines used 256 Hz x 5 s or 200 Hz x 30 s.
  config.data.sample_rate_hz = 125.0
  config.data.window_seconds = 10.0
  # Per channel per window: 'minmax' ([0, 1], the BP model's), 'minmax_symmetric'
  # ([-1, 1], the EEG re-implementation's) or 'zscore'.
  config.data.normalisation = 'minmax'
  # Channels per window with padding (pad mask): 0 = the most any recording has; at most
  # 64 (the model's channel table).
  config.data.pad_channels = 0
  # The last fraction (in time) of each recording's windows held out for validation.
  config.data.validation_fraction = 0.1

  # The later re-implementation's optimisation: AdamW lr 1.25e-3, betas (0.9, 0.98), weight
  # decay 0.05, linear warm-up from 2.5e-7 then cosine to 2.5e-7, no clipping.
  config.learning_rate = 1.25e-3
  config.b1, config.b2 = 0.9, 0.98
  config.weight_decay = 0.05
  config.schedule = 'warmup_cosine'
  config.min_learning_rate = 2.5e-7
  config.grad_clip_norm = 0.0
  # Short enough for 2 CPU cores on the synthetic cohort (about 1,400 training windows):
  # 43 updates of 32 per epoch; 'published' gives the published 50 epochs of 32 x 8.
  config.warmup_epochs = 1.0
  config.num_epochs = 12
  config.grad_accum_steps = 1
  # No early stopping: the schedule runs to its end.
  config.patience = config.num_epochs
  config.seed = 42
  if arg == 'published':
    config.warmup_epochs = 3.0
    config.num_epochs = 50
    config.patience = 50
    config.grad_accum_steps = 8
  return config
