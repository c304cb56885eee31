"""Lower Conv2d and Linear layers to the matrices a crossbar computes, exactly as torch does.

A crossbar computes ``y = x @ W`` with inputs on rows and outputs on columns. For a Conv2d with
``groups`` groups, group ``g`` has the matrix ``W_g`` of shape ``(in_channels/groups * kh * kw,
out_channels/groups)``. Its rows follow torch's ``unfold`` order (channel, then kernel row, then
kernel column), so ``unfold(x) @ W_g`` reproduces the convolution for any kernel size, stride,
padding (numbers, ``'same'``, ``'valid'``, and every ``padding_mode``), dilation and groups.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cim_runtime.errors import ConfigError


@dataclass(frozen=True)
class LayerSpec:
    """Geometry of one mapped layer; enough to rebuild its weights and recompute it."""

    #: Qualified module name in the network (``features.conv0``).
    name: str
    #: ``conv2d`` or ``linear``.
    kind: str
    #: Shape of the layer's weight tensor.
    weight_shape: tuple[int, ...]
    groups: int = 1
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    #: Input padding as (left, right, top, bottom), in pixels.
    padding_lrtb: tuple[int, int, int, int] = (0, 0, 0, 0)
    padding_mode: str = "zeros"

    @property
    def matrix_rows(self) -> int:
        """Rows of each group's matrix (crossbar inputs)."""
        return int(torch.Size(self.weight_shape[1:]).numel())

    @property
    def matrix_cols(self) -> int:
        """Columns of each group's matrix (crossbar outputs)."""
        return self.weight_shape[0] // self.groups

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "LayerSpec":
        tuples = ("weight_shape", "kernel_size", "stride", "dilation", "padding_lrtb")
        return cls(**{key: tuple(value) if key in tuples else value for key, value in raw.items()})


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """Return (left, right, top, bottom) padding as torch applies it, 'same' included."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        pads = []
        for kernel, dilation in zip(reversed(conv.kernel_size), reversed(conv.dilation)):
            total = dilation * (kernel - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    pad_h, pad_w = conv.padding
    return (pad_w, pad_w, pad_h, pad_h)


def spec_for(name: str, module: nn.Module) -> LayerSpec:
    """Describe a Conv2d or Linear module for mapping.

    Raises:
        ConfigError: the module is of another type.
    """
    if isinstance(module, nn.Conv2d):
        return LayerSpec(
            name=name, kind="conv2d", weight_shape=tuple(module.weight.shape), groups=module.groups,
            kernel_size=tuple(module.kernel_size), stride=tuple(module.stride), dilation=tuple(module.dilation),
            padding_lrtb=_conv_padding(module), padding_mode=module.padding_mode,
        )
    if isinstance(module, nn.Linear):
        return LayerSpec(name=name, kind="linear", weight_shape=tuple(module.weight.shape))
    raise ConfigError(f"layer {name!r} is a {type(module).__name__}; only Conv2d and Linear layers can be mapped")


def mappable_layers(network: nn.Module) -> list[tuple[str, nn.Module]]:
    """List the (name, module) pairs of every Conv2d and Linear layer, in registration order."""
    return [(name, module) for name, module in network.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


def weight_to_matrices(spec: LayerSpec, weight: torch.Tensor) -> torch.Tensor:
    """Return the ``(groups, matrix_rows, matrix_cols)`` crossbar matrices of a weight tensor."""
    out_features = spec.weight_shape[0]
    per_group = weight.reshape(spec.groups, out_features // spec.groups, -1)
    return per_group.transpose(1, 2)


def matrices_to_weight(spec: LayerSpec, matrices: torch.Tensor) -> torch.Tensor:
    """Invert :func:`weight_to_matrices`."""
    return matrices.transpose(1, 2).reshape(spec.weight_shape)


def lower_input(spec: LayerSpec, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Turn a layer input into crossbar row vectors.

    Returns:
        ``(columns, out_spatial)``: for conv, columns has shape ``(N, groups, matrix_rows, L)`` with
        ``L`` output positions and ``out_spatial`` is ``(H_out, W_out)``; for linear, columns has shape
        ``(N, 1, in_features, 1)`` and ``out_spatial`` is empty.
    """
    if spec.kind == "linear":
        return x.reshape(x.shape[0], 1, x.shape[-1], 1), ()
    if any(spec.padding_lrtb):
        mode = "constant" if spec.padding_mode == "zeros" else spec.padding_mode
        x = F.pad(x, spec.padding_lrtb, mode=mode)
    columns = F.unfold(x, spec.kernel_size, dilation=spec.dilation, stride=spec.stride)
    out_spatial = tuple(
        (size - dilation * (kernel - 1) - 1) // stride + 1
        for size, kernel, dilation, stride in zip(x.shape[-2:], spec.kernel_size, spec.dilation, spec.stride)
    )
    return columns.reshape(x.shape[0], spec.groups, spec.matrix_rows, -1), out_spatial


def raise_output(spec: LayerSpec, products: torch.Tensor, out_spatial: tuple[int, ...], bias: torch.Tensor | None) -> torch.Tensor:
    """Turn per-group crossbar outputs ``(N, groups, matrix_cols, L)`` back into the layer output."""
    batch = products.shape[0]
    if spec.kind == "linear":
        output = products.reshape(batch, spec.matrix_cols)
        return output if bias is None else output + bias
    output = products.reshape(batch, spec.weight_shape[0], *out_spatial)
    return output if bias is None else output + bias.view(1, -1, 1, 1)


def lowered_forward(spec: LayerSpec, x: torch.Tensor, matrices: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Compute the layer from its matrices without tiling (the untiled reference)."""
    columns, out_spatial = lower_input(spec, x)
    products = torch.einsum("ngrl,grc->ngcl", columns, matrices)
    return raise_output(spec, products, out_spatial, bias)
