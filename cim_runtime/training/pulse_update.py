"""Pulse-update training: weights held by differential device pairs that move only by device pulses.

A weight is ``w = scale * (x_plus - x_minus)``, where ``x_plus`` and ``x_minus`` are the normalized
conductances of its G+ and G- devices and ``scale`` is fixed per layer. After backpropagation the
optimizer proposes a change ``dw``. :meth:`DevicePairs.apply` turns it into a whole number of pulses,
``dw / step_w`` rounded (deterministic or stochastic) and capped at ``pulse_limit``, where ``step_w``
is the weight change of one pulse on a perfectly linear device of the same pulse count. The pulses go
to one device of the pair, through the torch twin of the simulator's response curve, so
nonlinearity, up/down asymmetry, the finite number of levels and noise decide the weight that
results:

* a pair with a positive weight (G+ above G-) moves G+: potentiation to raise the weight and
  depression to lower it. A negative weight moves G- the other way round, and a zero weight moves G+
  up or G- up. So one device of each pair stays at the bottom of its range, as in
  :mod:`cim_runtime.mapping.encoding`, and a weight crosses zero only through the bottom.
* ``identical`` pulses are all the nominal pulse, worth one nominal pulse each.
* ``non-identical`` pulses get, per device, the amplitude that moves the device one linear step
  along its own curve, from the pulse law's threshold up to ``amplitude_max_v``. This compensates
  the nonlinearity wherever the amplitude limit allows.

Device-to-device step spread, cycle-to-cycle step noise and write noise come from the device's
``[variation]`` table.

NOTE: ``n`` pulses are applied as one move of their summed nominal pulses. That is exact without
noise, because every curve composes. The cycle-to-cycle noise of the ``n`` pulses is drawn as one
normal factor with the summed variance. Stuck cells, drift, wear-out, threshold spread, per-cell
nonlinearity spread and range spread of the device file are not modelled during training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cim_runtime.device.config import DeviceConfig
from cim_runtime.errors import ConfigError
from cim_runtime.training.torch_response import build_torch_curve

ROUNDINGS = ("stochastic", "deterministic")
PULSE_SCHEMES = ("identical", "non-identical")


@dataclass(frozen=True)
class PulseSettings:
    """Settings of the conversion from an optimizer's desired change to device pulses."""

    #: ``identical`` (every pulse nominal) or ``non-identical`` (amplitude chosen per device).
    scheme: str = "identical"
    #: ``stochastic`` (round up with probability equal to the fraction) or ``deterministic`` (nearest).
    rounding: str = "stochastic"
    #: Largest number of pulses one device gets in one update, at least 1.
    pulse_limit: int = 8
    #: Largest weight magnitude a pair can hold, as a multiple of the layer's initial largest magnitude.
    weight_range_factor: float = 2.0
    #: Largest pulse amplitude of the non-identical scheme, in volts.
    amplitude_max_v: float = 2.0

    def __post_init__(self) -> None:
        if self.scheme not in PULSE_SCHEMES:
            raise ConfigError(f"pulse scheme {self.scheme!r} is invalid: use one of {', '.join(PULSE_SCHEMES)}")
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"rounding {self.rounding!r} is invalid: use one of {', '.join(ROUNDINGS)}")
        if not isinstance(self.pulse_limit, int) or self.pulse_limit < 1:
            raise ConfigError(f"pulse_limit={self.pulse_limit!r} is invalid: must be a whole number of at least 1")
        if not (math.isfinite(self.weight_range_factor) and self.weight_range_factor >= 1):
            raise ConfigError(f"weight_range_factor={self.weight_range_factor} is invalid: must be at least 1")
        if not (math.isfinite(self.amplitude_max_v) and self.amplitude_max_v > 0):
            raise ConfigError(f"amplitude_max_v={self.amplitude_max_v} is invalid: must be above 0 V")


@dataclass
class UpdateStats:
    """Counts of one or more pulse updates."""

    #: Weights the optimizer asked to change.
    weights: int = 0
    #: Pulses applied, summed over devices.
    pulses: int = 0
    #: Weights whose pulse count was capped at the pulse limit.
    capped: int = 0
    #: Weights whose desired change was not finite and was dropped.
    non_finite: int = 0

    def add(self, other: "UpdateStats") -> None:
        self.weights += other.weights
        self.pulses += other.pulses
        self.capped += other.capped
        self.non_finite += other.non_finite


def _pulse_count_nominal(law, amplitude_v: torch.Tensor) -> torch.Tensor:
    """Return the nominal pulses a pulse of ``amplitude_v`` at the nominal width is worth."""
    overdrive = (amplitude_v.abs() - law.threshold_v) / (law.nominal_amplitude_v - law.threshold_v)
    return overdrive.clamp(min=0.0) ** law.amplitude_exponent


def _amplitude_for(law, nominal: torch.Tensor) -> torch.Tensor:
    """Invert :func:`_pulse_count_nominal`: the amplitude worth ``nominal`` nominal pulses, in volts."""
    return law.threshold_v + (law.nominal_amplitude_v - law.threshold_v) * nominal.clamp(min=0.0) ** (1.0 / law.amplitude_exponent)


class DevicePairs:
    """The G+/G- device pairs behind one weight tensor, in normalized conductance.

    Args:
        weight: the initial weights; the pairs encode them exactly when they lie in the pair's range.
        device: the device model (response curve, pulse laws, variation).
        settings: pulse scheme, rounding and limits.
        generator: random generator of every draw (device spread, noise, stochastic rounding). Processes
            of one distributed run must seed it alike so that their devices stay identical.
    """

    def __init__(self, weight: torch.Tensor, device: DeviceConfig, settings: PulseSettings, generator: torch.Generator):
        self.device = device
        self.settings = settings
        self.generator = generator
        self.curve = build_torch_curve(device.response)
        self.low, self.high = self.curve.reachable()
        pulses_up, pulses_down = self.curve.pulses_across()
        self.pulses_across = (pulses_up + pulses_down) / 2

        values = weight.detach().to(torch.float64).cpu()
        largest = float(values.abs().max()) if values.numel() else 0.0
        largest = largest if math.isfinite(largest) and largest > 0 else 1.0
        #: Weight per unit of normalized conductance difference.
        self.scale = largest * settings.weight_range_factor / (self.high - self.low)
        #: Weight change of one pulse on a linear device that crosses the window in ``pulses_across`` pulses.
        self.step_w = self.scale * (self.high - self.low) / self.pulses_across
        self.x_plus = self.low + values.clamp(min=0.0) / self.scale
        self.x_minus = self.low + (-values).clamp(min=0.0) / self.scale

        sigma = device.variation.step_sigma_dtod
        shape = (2, *values.shape)
        self.step_factor = torch.exp(sigma * torch.randn(shape, generator=generator, dtype=torch.float64) - sigma**2 / 2)

    def weight(self) -> torch.Tensor:
        """Return the weights the pairs hold now, in float64 on the CPU."""
        return self.scale * (self.x_plus - self.x_minus)

    def pulse_counts(self, desired_change: torch.Tensor) -> tuple[torch.Tensor, UpdateStats]:
        """Round a desired weight change to signed pulse counts, capped at the pulse limit."""
        change = desired_change.detach().to(torch.float64).cpu()
        finite = torch.isfinite(change)
        ratio = torch.where(finite, change, torch.zeros_like(change)) / self.step_w
        limit = self.settings.pulse_limit
        # Clamp before rounding so that huge requests never reach float precision limits.
        ratio = ratio.clamp(-limit - 1.0, limit + 1.0)
        if self.settings.rounding == "stochastic":
            counts = torch.floor(ratio + torch.rand(ratio.shape, generator=self.generator, dtype=torch.float64))
        else:
            counts = torch.round(ratio)
        capped = counts.abs() > limit
        counts = counts.clamp(-limit, limit)
        stats = UpdateStats(weights=int(change.numel()), pulses=int(counts.abs().sum()), capped=int(capped.sum()),
                            non_finite=int((~finite).sum()))
        return counts, stats

    def apply(self, desired_change: torch.Tensor) -> UpdateStats:
        """Pulse the devices toward ``weight() + desired_change`` and return what was applied."""
        counts, stats = self.pulse_counts(desired_change)
        # Only devices that get pulses move, so the curves are evaluated on those alone.
        active = torch.nonzero(counts.reshape(-1)).flatten()
        if active.numel() == 0:
            return stats
        counts = counts.reshape(-1)[active]
        x_plus, x_minus = self.x_plus.reshape(-1), self.x_minus.reshape(-1)
        present = x_plus[active] - x_minus[active]
        use_plus = (present > 0) | ((present == 0) & (counts > 0))
        # The device that moves rises when the weight should rise on G+, or fall on G-.
        rising = torch.where(use_plus, counts > 0, counts < 0)
        x = torch.where(use_plus, x_plus[active], x_minus[active])
        factor = torch.where(use_plus, self.step_factor[0].reshape(-1)[active], self.step_factor[1].reshape(-1)[active])
        moved = torch.empty_like(x)
        for direction in (True, False):
            chosen = rising if direction else ~rising
            moved[chosen] = self._move(x[chosen], counts[chosen].abs(), direction, factor[chosen])
        x_plus = x_plus.clone()
        x_minus = x_minus.clone()
        x_plus[active[use_plus]] = moved[use_plus]
        x_minus[active[~use_plus]] = moved[~use_plus]
        self.x_plus = x_plus.reshape(self.x_plus.shape)
        self.x_minus = x_minus.reshape(self.x_minus.shape)
        return stats

    def _move(self, x: torch.Tensor, pulses: torch.Tensor, rising: bool, factor: torch.Tensor) -> torch.Tensor:
        """Move devices ``x`` by ``pulses`` pulses up (``rising``) or down, noise included."""
        nominal = self._nominal_pulses(x, pulses, rising) * factor

        variation = self.device.variation
        if variation.step_sigma_ctoc > 0:
            spread = variation.step_sigma_ctoc / pulses.clamp(min=1.0).sqrt()
            noise = torch.randn(x.shape, generator=self.generator, dtype=torch.float64)
            nominal = nominal * (1.0 + spread * noise).clamp(min=0.0)

        moved = self.curve.up(x, nominal) if rising else self.curve.down(x, nominal)
        if variation.write_noise_sigma_rel > 0:
            jump = variation.write_noise_sigma_rel * pulses.sqrt() * torch.randn(x.shape, generator=self.generator, dtype=torch.float64)
            moved = (moved + torch.where(pulses > 0, jump, torch.zeros_like(jump))).clamp(0.0, 1.0)
        return moved

    def _nominal_pulses(self, x: torch.Tensor, pulses: torch.Tensor, rising: bool) -> torch.Tensor:
        """Return the nominal pulses that ``pulses`` pulses of the scheme are worth on devices ``x``."""
        law = self.device.law_up if rising else self.device.law_down
        if self.settings.scheme == "identical":
            return pulses * _pulse_count_nominal(law, torch.tensor(law.nominal_amplitude_v, dtype=torch.float64))

        # Non-identical: each pulse aims at one linear step along this device's own curve.
        step_x = (self.high - self.low) / self.pulses_across
        target = (x + pulses * step_x) if rising else (x - pulses * step_x)
        target = target.clamp(self.low, self.high)
        start = self.curve.position(x, rising)
        needed = (self.curve.position(target, rising) - start).clamp(min=0.0)
        per_pulse = needed / pulses.clamp(min=1.0)
        amplitude_v = _amplitude_for(law, per_pulse).clamp(max=self.settings.amplitude_max_v)
        return pulses * _pulse_count_nominal(law, amplitude_v)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the device state as tensors, for checkpoints loaded with ``weights_only=True``."""
        return {"x_plus": self.x_plus, "x_minus": self.x_minus, "step_factor": self.step_factor,
                "scale": torch.tensor(self.scale, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the state that :meth:`state_dict` returned.

        Raises:
            ConfigError: the saved state has another shape than these pairs.
        """
        if tuple(state["x_plus"].shape) != tuple(self.x_plus.shape):
            raise ConfigError(f"saved device state has shape {tuple(state['x_plus'].shape)}, "
                              f"but the layer has {tuple(self.x_plus.shape)}; resume with the same model and classes")
        self.x_plus = state["x_plus"].to(torch.float64)
        self.x_minus = state["x_minus"].to(torch.float64)
        self.step_factor = state["step_factor"].to(torch.float64)
        self.scale = float(state["scale"])
        self.step_w = self.scale * (self.high - self.low) / self.pulses_across


class PulseUpdater:
    """The device pairs of every device-constrained layer, updated after each optimizer step.

    Use :meth:`step` in place of ``optimizer.step()``: the optimizer computes its update for every
    parameter (momentum and weight decay included). The digital parameters keep it, and each
    device-constrained weight is replaced by what its pairs hold after the pulses.
    """

    def __init__(self, layers: dict[str, torch.nn.Module], device: DeviceConfig, settings: PulseSettings, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.layers = layers
        self.pairs = {name: DevicePairs(layer.weight, device, settings, self.generator) for name, layer in layers.items()}
        self.write_weights()

    def write_weights(self) -> None:
        """Copy the weights the pairs hold into the layers."""
        with torch.no_grad():
            for name, layer in self.layers.items():
                layer.weight.copy_(self.pairs[name].weight().to(layer.weight.dtype))

    def step(self, optimizer: torch.optim.Optimizer) -> UpdateStats:
        """Run ``optimizer.step()``, then pulse the devices toward the optimizer's weights."""
        before = {name: layer.weight.detach().clone() for name, layer in self.layers.items()}
        optimizer.step()
        stats = UpdateStats()
        for name, layer in self.layers.items():
            stats.add(self.pairs[name].apply(layer.weight.detach() - before[name]))
        self.write_weights()
        return stats

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(),
                "pairs": {name: pairs.state_dict() for name, pairs in self.pairs.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.pairs) - set(state["pairs"]))
        if missing:
            raise ConfigError(f"saved device state lacks layer(s) {', '.join(missing)}; resume with the same --device-layers")
        self.generator.set_state(state["generator"])
        for name, pairs in self.pairs.items():
            pairs.load_state_dict(state["pairs"][name])
        self.write_weights()
