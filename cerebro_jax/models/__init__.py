"""The Flax CEReBrO BP model, its configuration, PyTorch weights in, model directories."""
