"""Read recipes, build their torchvision networks and load trained weights safely."""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field, fields
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
OPTIONAL_FIELDS = ("weights_file", "training", "digital_accuracy")


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

    def validate(self, source: str) -> None:
        """Raise :class:`DataError` naming the first field that cannot work."""
        def fail(message: str) -> None:
            raise DataError(f"model recipe {source} is invalid: {message}")

        for name in ("input_size_px", "resize_px"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 8 <= value <= 4096:
                fail(f"{name}={value!r} must be a whole number of pixels between 8 and 4096")
        if self.resize_px < self.input_size_px:
            fail(f"resize_px={self.resize_px} must be at least input_size_px={self.input_size_px}")
        for name in ("normalize_mean", "normalize_std"):
            values = getattr(self, name)
            if not isinstance(values, list) or len(values) != 3 or not all(isinstance(v, (int, float)) for v in values):
                fail(f"{name}={values!r} must be three numbers, one per RGB channel")
        if not all(v > 0 for v in self.normalize_std):
            fail(f"normalize_std={self.normalize_std} must be above 0")
        if not isinstance(self.builder_kwargs, dict):
            fail(f"builder_kwargs must be a JSON object, got {type(self.builder_kwargs).__name__}")
        folders = [entry.folder for entry in self.classes]
        if len(set(folders)) != len(folders):
            fail("class folders repeat")


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
    model_dir = Path(model_dir)
    if model_dir.is_file():
        raise DataError(f"--model {model_dir} is a file; pass the folder that contains {RECIPE_FILE} and the weights")
    path = model_dir / RECIPE_FILE
    if not path.is_file():
        raise DataError(f"model recipe not found: {path}; pass --model with a folder that contains {RECIPE_FILE}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"model recipe {path} is not readable JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise DataError(f"model recipe {path} is invalid: expected a JSON object, got {type(raw).__name__}")
    known = {item.name for item in fields(Recipe)}
    missing = sorted(name for name in known if name not in raw and name not in OPTIONAL_FIELDS)
    unknown = sorted(set(raw) - known)
    if missing or unknown:
        raise DataError(f"model recipe {path} is invalid: missing field(s) {missing or 'none'}, unknown field(s) {unknown or 'none'}")
    try:
        raw["classes"] = [ClassEntry(folder=str(entry["folder"]), name=str(entry["name"])) for entry in raw["classes"]]
    except (TypeError, KeyError) as exc:
        raise DataError(f"model recipe {path} is invalid: each class needs a 'folder' and a 'name' ({exc})") from exc
    recipe = Recipe(**raw)
    if not recipe.classes:
        raise DataError(f"model recipe {path} lists no classes")
    recipe.validate(str(path))
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
