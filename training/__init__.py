"""The training library under train.py: arguments and recipes, the training loop (`trainer`), training methods as
plug-ins (`methods`), optimizer and losses, checkpoints, run records, the Hub and the hardware record."""
