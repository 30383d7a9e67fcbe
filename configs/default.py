"""Base config: CEReBrO small from scratch on the synthetic cohort, subject-independent.

Finishes in about 5 minutes on 2 CPU cores. Every other config starts from this one.
  python -m cerebro_jax.main --config=configs/default.py --workdir=runs/default
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # What the job trains: 'bp' (blood pressure, train.py) or 'masked_patches' (pre-training,
  # pretrain.py; configs/pretrain.py).
  config.objective = 'bp'

  config.data = ml_collections.ConfigDict()
  # 'synthetic' (built into <workdir>/data on first use), 'mimic3', 'vitaldb' or 'pulsedb'.
  config.data.source = 'synthetic'
  # A dataset folder written by scripts/prepare_data.py; '' builds the synthetic cohort.
  config.data.dir = ''
  # Synthetic cohort only: 'subject' (calibration-free) or 'random' (calibration-based).
  config.data.protocol = 'subject'
  # Synthetic cohort only: train / validation / test fractions and the split seed.
  config.data.fractions = (0.8, 0.1, 0.1)
  config.data.split_seed = 42
  # Synthetic cohort only: subjects, minutes per subject, generator seed.
  config.data.num_subjects = 48
  config.data.minutes_per_subject = 6.0
  config.data.cohort_seed = 0
  # Split protocols this config's experiment needs ('subject', 'random', 'pulsedb'): the
  # run stops before training on a dataset built otherwise. () = any.
  config.data.required_protocols = ()
  # Shuffle buffer of the training pipeline (windows).
  config.data.shuffle_buffer = 16_384
  # Keep this process's part of the training split in memory after the first epoch
  # (10 kB a window: only for datasets that fit) instead of streaming it from disk each
  # epoch; the order is then shuffled by the buffer alone (still fixed by seed and epoch).
  config.data.cache = False

  config.model = ml_collections.ConfigDict()
  # 'small', 'base' or 'large' (ignored when init_from gives a model: its size rules).
  config.model.size = 'small'
  # Number of blocks; 0 = the size's own depth (a smaller number for quick experiments).
  config.model.depth = 0
  # 'alternating' (the paper's) or 'full' attention.
  config.model.attention_type = 'alternating'
  # Compute dtype: 'float32', or 'bfloat16' on accelerators (parameters stay float32).
  config.model.dtype = 'float32'
  # Stochastic depth of every block while training (the paper: 0.2; 0.1 learns faster
  # from scratch on the small synthetic cohort).
  config.model.drop_path_rate = 0.1

  # A model directory to start from (scripts/convert_weights.py output); '' = none.
  config.init_from = ''
  # 'scratch' (fresh init), 'unfrozen' (all train) or 'frozen' (only the parameters
  # matching trainable_patterns train; the paper: patch embedding and head).
  config.train_mode = 'scratch'
  # fnmatch patterns over parameter paths ('encoder/patch_embed/kernel', ...) that train
  # in 'frozen' mode.
  config.trainable_patterns = ('encoder/patch_embed/*', 'head/*')
  # BP head bias at the start: 'train_mean' (the training mean DBP/SBP; speeds up short
  # runs), 'zeros' (the original init) or 'keep' (as loaded from init_from).
  config.head_bias_init = 'train_mean'

  # Adam (the paper: lr 1e-4, betas 0.9/0.999, no weight decay, no clipping; 3e-4 here
  # for a 5-minute run from scratch; 1e-3 did not learn in 6 epochs).
  config.learning_rate = 3e-4
  config.b1 = 0.9
  config.b2 = 0.999
  # 'constant' (config.learning_rate throughout) or 'warmup_cosine' (per update: linear
  # from min_learning_rate over warmup_epochs, then cosine back to it at num_epochs).
  config.schedule = 'constant'
  config.warmup_epochs = 0.0
  config.min_learning_rate = 0.0
  # Micro-batches of batch_size whose gradients are averaged into each optimizer update
  # (optax.MultiSteps): an effective batch of batch_size x grad_accum_steps.
  config.grad_accum_steps = 1
  # Decoupled weight decay (AdamW) when > 0; frozen parameters never decay.
  config.weight_decay = 0.0
  # Clip the global gradient norm to this when > 0.
  config.grad_clip_norm = 0.0

  # Global batch (split over all devices; must divide evenly).
  config.batch_size = 32
  # Parts each device's batch is cut into inside a step, computed side by side and
  # averaged like gradient accumulation (the BP loss is the same; dropout and
  # pre-training's masks are drawn per part); faster on CPUs. 0: XLA's CPU threads per
  # device on a CPU (parts of at least 8 windows), 1 on a GPU or TPU.
  config.step_splits = 0
  # Evaluation batch (padded, masked; must divide evenly over devices).
  config.eval_batch_size = 256
  # Epochs at most; early stopping on validation MSE after `patience` epochs without
  # improvement.
  config.num_epochs = 24
  config.patience = 8
  # Seed of initialisation, dropout and data order.
  config.seed = 0
  # Steps between loss checks, progress and TensorBoard updates.
  config.log_every_steps = 10
  # Splits evaluated with the best parameters at the end, side by side; () = validation
  # and every test split of the dataset (test; or PulseDB's test_calbased, test_calfree,
  # test_aami).
  config.eval_splits = ()
  return config
