"""Inference: test-time augmentation, the predictor (a model with its checkpoint) and batch prediction jobs."""
