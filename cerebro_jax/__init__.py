"""CEReBrO for blood-pressure estimation in JAX/Flax: model, conversion, prediction."""
