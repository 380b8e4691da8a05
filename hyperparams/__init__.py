"""Hyperparameter files, one per experiment (plain Python exposing get_config())."""
