"""EoMT, the encoder-only mask transformer: config keys (config.py) and the meta architecture (meta_arch.py)."""
