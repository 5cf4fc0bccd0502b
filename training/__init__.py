"""Pieces of train.py that are not the training loop itself: recipes, checkpoints, the Hub, run records."""
