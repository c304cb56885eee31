"""Read recipes, build their torchvision networks and load trained weights safely."""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from cim_runtime.errors import DataError

#: Folder of the checkpoint that ``cim-run infer`` uses when no ``--model`` is given.
DEFAULT_MODEL_DIR = Path(str(resources.files("cim_runtime_models") / "flowers102_densenet"))
#: Folder of the bundled validation photos (ImageFolder layout).
DEFAULT_SAMPLE_DIR = Path(str(resources.files("cim_runtime_models") / "flowers102_sample"))

RECIPE_FILE = "recipe.json"


@dataclass(frozen=True)
class ClassEntry:
    """One output class of a network: its dataset folder name and its readable name."""

    folder: str
    name: str


@dataclass
class Recipe:
    """Everything needed to rebuild a trained network and feed it images."""

    name: str
    builder: str
    builder_kwargs: dict[str, Any]
    input_size_px: int
    resize_px: int
    normalize_mean: list[float]
    normalize_std: list[float]
    classes: list[ClassEntry]
    weights_file: str = "weights.pt"
    training: dict[str, Any] = field(default_factory=dict)
    digital_accuracy: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _build_densenet(num_classes: int, **kwargs: Any) -> nn.Module:
    return torchvision.models.DenseNet(num_classes=num_classes, **kwargs)


def _build_resnet(num_classes: int, block: str, layers: list[int], **kwargs: Any) -> nn.Module:
    blocks = {"basic": torchvision.models.resnet.BasicBlock, "bottleneck": torchvision.models.resnet.Bottleneck}
    if block not in blocks:
        raise DataError(f"unknown ResNet block {block!r}: use one of {sorted(blocks)}")
    return torchvision.models.ResNet(blocks[block], layers, num_classes=num_classes, **kwargs)


def _build_vgg(num_classes: int, config: list[int | str], batch_norm: bool = True, hidden: int = 256) -> nn.Module:
    features = torchvision.models.vgg.make_layers(config, batch_norm=batch_norm)
    net = torchvision.models.VGG(features, num_classes=num_classes)
    widths = [c for c in config if isinstance(c, int)]
    # The stock VGG head expects 512x7x7 features; a reduced VGG pools to 1x1 and uses a small head.
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    net.classifier = nn.Sequential(nn.Linear(widths[-1], hidden), nn.ReLU(True), nn.Dropout(0.3), nn.Linear(hidden, num_classes))
    return net


#: The only network constructors a recipe may name.
BUILDERS = {"densenet": _build_densenet, "resnet": _build_resnet, "vgg": _build_vgg}


def build_network(recipe: Recipe) -> nn.Module:
    """Build the untrained torchvision network that ``recipe`` describes."""
    if recipe.builder not in BUILDERS:
        raise DataError(f"recipe {recipe.name!r} names unknown network builder {recipe.builder!r}: use one of {sorted(BUILDERS)}")
    try:
        return BUILDERS[recipe.builder](len(recipe.classes), **recipe.builder_kwargs)
    except TypeError as exc:
        raise DataError(f"recipe {recipe.name!r} has invalid arguments for {recipe.builder}: {exc}") from exc


def load_recipe(model_dir: Path) -> Recipe:
    """Read and validate ``model_dir/recipe.json``."""
    path = Path(model_dir) / RECIPE_FILE
    if not path.is_file():
        raise DataError(f"model recipe not found: {path}; pass --model with a folder that contains {RECIPE_FILE}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw["classes"] = [ClassEntry(**entry) for entry in raw["classes"]]
        recipe = Recipe(**raw)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"model recipe {path} is invalid: {exc}") from exc
    if not recipe.classes:
        raise DataError(f"model recipe {path} lists no classes")
    return recipe


def load_model(model_dir: Path) -> tuple[Recipe, nn.Module]:
    """Load a recipe and its trained weights, in evaluation mode.

    Raises:
        DataError: the recipe or weights are missing, corrupt or do not fit the network.
    """
    recipe = load_recipe(model_dir)
    network = build_network(recipe)
    weights_path = Path(model_dir) / recipe.weights_file
    if not weights_path.is_file():
        raise DataError(f"model weights not found: {weights_path}")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise DataError(
            f"model weights {weights_path} cannot be loaded: it is not a state_dict saved by torch.save ({type(exc).__name__})"
        ) from exc
    try:
        network.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise DataError(f"model weights {weights_path} do not fit recipe {recipe.name!r}: {detail}") from exc
    network.eval()
    return recipe, network
