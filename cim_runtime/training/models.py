"""Networks for training: small builders from the recipe zoo, or a trained checkpoint for transfer learning."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cim_runtime.errors import ConfigError
from cim_runtime.training.layers import classifier_name
from cim_runtime.zoo.recipes import BUILDERS, DEFAULT_MODEL_DIR, RECIPE_FILE, load_model

#: Networks built from scratch by name: (builder, keyword arguments).
SMALL_NETWORKS = {
    "densenet-small": ("densenet", {"growth_rate": 16, "block_config": [4, 8, 8], "num_init_features": 32, "bn_size": 4}),
    "resnet-small": ("resnet", {"block": "basic", "layers": [1, 1, 1, 1]}),
    "vgg-small": ("vgg", {"config": [32, "M", 64, "M", 128, "M", 128, "M"], "hidden": 128}),
}
#: Name of the bundled Oxford Flowers checkpoint.
BUNDLED_MODEL = "flowers102-densenet"
MODEL_NAMES = (*SMALL_NETWORKS, BUNDLED_MODEL)


def build_training_network(model: str, num_classes: int, seed: int) -> tuple[nn.Module, str]:
    """Build the network ``model`` names, with a fresh ``num_classes``-way classifier, and describe it.

    ``model`` is one of :data:`SMALL_NETWORKS` (random initial weights), ``flowers102-densenet`` (the
    bundled checkpoint) or a checkpoint folder with ``recipe.json``. A checkpoint keeps its trained
    feature layers and always gets a new, randomly initialized classifier, as in transfer learning.

    Raises:
        ConfigError: the name is neither a network nor a checkpoint folder.
        DataError: the checkpoint is corrupt.
    """
    torch.manual_seed(seed)
    if model in SMALL_NETWORKS:
        builder, kwargs = SMALL_NETWORKS[model]
        return BUILDERS[builder](num_classes, **kwargs), f"{model} ({builder}, random initial weights)"
    folder = DEFAULT_MODEL_DIR if model == BUNDLED_MODEL else Path(model)
    if not (folder / RECIPE_FILE).is_file():
        raise ConfigError(f"--model {model!r} is neither a network ({', '.join(MODEL_NAMES)}) "
                          f"nor a checkpoint folder with {RECIPE_FILE}")
    recipe, network = load_model(folder)
    _replace_classifier(network, num_classes)
    return network, f"{recipe.name} (checkpoint {folder}, new {num_classes}-class classifier)"


def _replace_classifier(network: nn.Module, num_classes: int) -> None:
    name = classifier_name(network)
    parent_name, _, attribute = name.rpartition(".")
    parent = network.get_submodule(parent_name) if parent_name else network
    old = getattr(parent, attribute)
    setattr(parent, attribute, nn.Linear(old.in_features, num_classes))
