"""EoMT, the encoder-only mask transformer: config keys (config.py), the meta architecture (meta_arch.py), its timm
encoder (encoder.py) and its weights (weights.py)."""
