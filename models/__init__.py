"""Model zoo: one registry shared by pretrain.py and ideal.py.

    net = build_model("lenet", channels=1, size=28, classes=10)

Every classifier returns logits of shape (N, classes) for inputs (N, C, H, W)
in [0, 1]. The generator is built separately (see models.generator).
"""
from models.registry import MODELS, ModelError, build_model
from models.generator import Generator, init_generator_

__all__ = ["MODELS", "ModelError", "build_model", "Generator", "init_generator_"]
