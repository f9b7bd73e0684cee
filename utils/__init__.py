"""Shared pieces of pretrain.py and ideal.py: the black-box teacher, the
synthetic pool, losses, augmentation, evaluation and run bookkeeping."""
