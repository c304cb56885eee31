"""Network recipes and the trained checkpoints bundled with cim-runtime.

A recipe is a JSON file that names a torchvision network class and its arguments, the input size,
the normalization and the class list. Loading one never executes code read from the file: the
network class comes from a fixed table and the weights load with ``torch.load(weights_only=True)``.
"""

from cim_runtime.zoo.recipes import (
    DEFAULT_MODEL_DIR,
    DEFAULT_SAMPLE_DIR,
    ClassEntry,
    Recipe,
    build_network,
    load_model,
    load_recipe,
)

__all__ = [
    "DEFAULT_MODEL_DIR",
    "DEFAULT_SAMPLE_DIR",
    "ClassEntry",
    "Recipe",
    "build_network",
    "load_model",
    "load_recipe",
]
