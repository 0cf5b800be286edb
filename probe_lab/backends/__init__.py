"""Probe training backends: scikit-learn (in memory) and PyTorch Lightning (streaming, GPU)."""
