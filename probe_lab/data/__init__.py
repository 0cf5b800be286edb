"""Activation data: sources, the dataset type, splits, statistics and the Lightning DataModule."""
