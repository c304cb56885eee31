"""Save and load a converted, programmed and calibrated analog network exactly.

A saved network is a folder with two files:

* ``analog.json``: format version, analog config, tile plan, conductance window, weight scales and
  the folded batch-norm pairs;
* ``state.pt``: the converted network's state dict (measured conductances, calibration ranges,
  drift reference and gains, and every digital layer's parameters), loaded with
  ``torch.load(weights_only=True)``.

Loading needs a network of the same architecture (for example a fresh
``torchvision.models.resnet18(num_classes=102)``); its own weights are replaced by the saved ones.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cim_runtime.analog.config import AnalogConfig
from cim_runtime.analog.convert import AnalogNetwork, set_submodule
from cim_runtime.errors import ConfigError
from cim_runtime.mapping import ConductanceWindow, MappedNetwork, TilePlan

FORMAT_VERSION = 1
METADATA_FILE = "analog.json"
STATE_FILE = "state.pt"


def save_analog(analog: AnalogNetwork, folder: Path) -> None:
    """Write ``analog`` to ``folder`` (created if missing; existing files of the same names are replaced)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mapped = analog.mapped
    metadata = {
        "format_version": FORMAT_VERSION,
        "config": analog.config.to_dict(),
        "plan": json.loads(mapped.plan.to_json()),
        "window_s": [mapped.window.conductance_min_s, mapped.window.conductance_max_s],
        "scales": mapped.scales,
        "folded": [list(pair) for pair in analog.folded],
    }
    state = {name: tensor.detach().cpu() for name, tensor in analog.network.state_dict().items()}
    torch.save(state, folder / STATE_FILE)
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=1))


def load_analog(folder: Path, network: nn.Module) -> AnalogNetwork:
    """Rebuild the analog network saved in ``folder`` on top of ``network``'s architecture.

    Raises:
        ConfigError: the files are missing, of another format version, or do not fit ``network``.
    """
    folder = Path(folder)
    for name in (METADATA_FILE, STATE_FILE):
        if not (folder / name).is_file():
            raise ConfigError(f"{folder / name} not found: save the analog network with save_analog first")
    metadata = json.loads((folder / METADATA_FILE).read_text())
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{folder / METADATA_FILE} has format version {metadata.get('format_version')!r}; "
                          f"this version of cim-runtime reads version {FORMAT_VERSION}")
    state = torch.load(folder / STATE_FILE, weights_only=True)

    plan = TilePlan.from_json(json.dumps(metadata["plan"]))
    mapped = MappedNetwork(plan, ConductanceWindow(*metadata["window_s"]), {k: float(v) for k, v in metadata["scales"].items()}, {})
    placeholders = {}
    for spec in plan.layers:
        shape = (spec.groups, spec.matrix_rows, spec.matrix_cols)
        placeholders[spec.name] = (np.zeros(shape), np.zeros(shape))
    try:
        skeleton = _skeleton(network, metadata["folded"], state)
        analog = AnalogNetwork(skeleton, mapped, placeholders, AnalogConfig.from_dict(metadata["config"]),
                               [tuple(pair) for pair in metadata["folded"]])
        analog.network.load_state_dict(state, strict=True)
    except (AttributeError, RuntimeError) as exc:
        raise ConfigError(f"{folder / STATE_FILE} does not fit the given network: {exc}") from exc
    for layer in analog.analog_layers():
        layer.prepare()
    analog.seed(analog.config.seed)
    return analog


def _skeleton(network: nn.Module, folded: list[list[str]], state: dict) -> nn.Module:
    """Return an eval-mode copy of ``network`` shaped like the saved one: folded norms removed, biases added."""
    skeleton = copy.deepcopy(network).eval()
    for conv_name, norm_name in folded:
        set_submodule(skeleton, norm_name, nn.Identity())
        conv = skeleton.get_submodule(conv_name)
        if conv.bias is None and f"{conv_name}.bias" in state:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels))
    return skeleton
