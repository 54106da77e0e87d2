"""The shipped model's training: the recipe (run.py), network, augmentation, cross-validation and figures."""
