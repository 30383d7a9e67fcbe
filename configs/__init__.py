"""ml_collections configs: default.py (base), paper.py and accelerator.py (variants)."""
