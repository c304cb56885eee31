"""A Conv2d or Linear layer computed as the crossbar tiles compute it, batched over images and windows.

Signal chain of one forward pass:

1. The DAC turns the layer input into row read voltages: ``v = x * read_voltage_v / input_range``,
   quantized to ``dac_bits`` (optionally sent bit-serially, one bit plane per read).
2. Every tile multiplies its block of input rows by its block of conductances. All tiles of the layer
   run as one grouped convolution: each row block of each group becomes one convolution group whose
   kernel holds the block's conductances and zeros elsewhere, so no Python loop runs per image,
   window or tile.
3. Read noise is drawn per output: independent Gaussian cell noise on a column sums to one Gaussian
   whose variance is ``v**2 @ (sigma * G)**2``. That is one more convolution, or with the
   column-mean variance, the row power of each block times each column's mean ``(sigma * G)**2``.
4. The ADC digitizes each tile's column currents (the pair current ``I+ - I-``, or each column
   before a digital subtraction). Tile partial results are then summed digitally.
5. The sum is scaled back to layer units (weight per siemens, input per volt), multiplied by the
   drift-compensation gain, and the bias is added digitally.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cim_runtime.analog.config import AnalogConfig
from cim_runtime.analog.converters import Quantizer, SaturationCounter, bit_planes
from cim_runtime.analog.blocks import BlockSet, block_means, block_sets, channel_index, row_blocks, set_kernel
from cim_runtime.analog.counter_noise import MAX_ELEMENTS, draw_key
from cim_runtime.analog.fused import INLINE_NOISE, compiled, digitize_codes, full_variance, quantize_inputs, scale_outputs, subtract_pairs
from cim_runtime.analog.ir_drop import approximate_effective_conductance, check_first_order, exact_effective_conductance
from cim_runtime.errors import ConfigError
from cim_runtime.mapping import LayerSpec, Tile

#: Values sampled from one batch to estimate a calibration percentile.
CALIBRATION_SAMPLES = 1 << 18


class SetCurrents(NamedTuple):
    """Tile outputs of one block set, before the ADC (see :meth:`AnalogLayer.tile_currents`)."""

    #: Noiseless column currents, ``(N, H, W, groups, blocks, parts, matrix_cols)``.
    currents: torch.Tensor
    #: Read-noise variance of each current, or the row power per block ``(N, H, W, groups, blocks, 1, 1)``
    #: when ``column_variance`` is set. None without read noise.
    variance: torch.Tensor | None
    #: Factor of the row power per column: the block's mean ``(sigma * G)**2`` in kernel units,
    #: ``(groups, blocks, parts, matrix_cols)``. None for the exact variance.
    column_variance: torch.Tensor | None


#: Draws at least this large are split over CPU threads.
PARALLEL_NOISE_SIZE = 1 << 20

_noise_pool: ThreadPoolExecutor | None = None


def standard_normal(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Draw standard normal noise shaped ``shape``, reproducible for a given ``generator`` state.

    On the CPU, ``torch.randn`` runs on one thread. Large draws are cut into one chunk per torch
    thread. Each chunk gets its own generator seeded from ``generator``, so the result depends on the
    seed and the thread count but not on thread timing.
    """
    global _noise_pool
    threads = torch.get_num_threads()
    size = math.prod(shape)
    if like.device.type != "cpu" or threads < 2 or size < PARALLEL_NOISE_SIZE:
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
    if _noise_pool is None or _noise_pool._max_workers != threads:
        _noise_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="read-noise")
    noise = torch.empty(shape, dtype=like.dtype)
    seeds = torch.randint(0, 2**62, (threads,), generator=generator).tolist()
    chunks = noise.view(-1).chunk(threads)
    list(_noise_pool.map(lambda chunk, seed: chunk.normal_(generator=torch.Generator().manual_seed(seed)), chunks, seeds))
    return noise


def canonical_channels_last(values: torch.Tensor) -> torch.Tensor:
    """Return ``values`` in channels-last memory order with the standard strides.

    Where a dimension has size 1 its stride is arbitrary, and oneDNN picks its algorithm, and so its
    summation order, from the strides. Equal strides make the eager and the compiled paths agree bit
    for bit.
    """
    values = values.contiguous(memory_format=torch.channels_last)
    batch, channels, height, width = values.shape
    return values.as_strided(values.shape, (channels * height * width, 1, width * channels, channels))


class AnalogLayer(nn.Module):
    """A mapped layer computed from measured conductances through DAC, tiles and ADC.

    Args:
        spec: geometry of the layer.
        tiles: the layer's tiles from the tile plan.
        positive_s, negative_s: measured conductances G+ and G-, each ``(groups, matrix_rows, matrix_cols)``.
        weight_scale: weight per siemens of differential conductance.
        bias: the layer's bias, applied digitally; None for none.
        config: the analog signal chain.
        conductance_min_s: bottom of the conductance window, the level drift relaxes toward.
    """

    def __init__(self, spec: LayerSpec, tiles: list[Tile], positive_s, negative_s, weight_scale: float,
                 bias: torch.Tensor | None, config: AnalogConfig, conductance_min_s: float):
        super().__init__()
        self.spec = spec
        self.tiles = list(tiles)
        self.config = config
        self.weight_scale = float(weight_scale)
        self.conductance_min_s = float(conductance_min_s)
        self.blocks = row_blocks(spec, self.tiles)
        self.block_sets = block_sets(self.blocks, self.kernel_size[0] * self.kernel_size[1])
        self.noise_generator: torch.Generator | None = None
        self.dac_saturation = SaturationCounter()
        self.adc_saturation = SaturationCounter()
        self.calibrating: str | None = None
        #: Whether an ADC calibration has finished on this layer.
        self._calibrated = False
        self._calibration_stats: dict[str, float] = {}

        self.register_buffer("positive_s", torch.as_tensor(np.asarray(positive_s), dtype=torch.float64).clone())
        self.register_buffer("negative_s", torch.as_tensor(np.asarray(negative_s), dtype=torch.float64).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        #: Input value that the DAC maps to the full read voltage.
        self.register_buffer("input_range", torch.tensor(1.0))
        self.register_buffer("input_signed", torch.tensor(True))
        #: ADC full-scale range for whole reads and for bit-serial plane reads, in amperes; 0 until calibrated.
        self.register_buffer("adc_range_a", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("plane_adc_range_a", torch.tensor(0.0, dtype=torch.float64))
        #: Reference-read current per output column at calibration time, in amperes.
        self.register_buffer("drift_reference_a", torch.zeros(spec.weight_shape[0], dtype=torch.float64))
        self.register_buffer("output_gain", torch.ones(spec.weight_shape[0]))
        self.prepare()

    # Geometry and kernels.

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.spec.kernel_size if self.spec.kind == "conv2d" else (1, 1)

    def effective_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return G+ and G- as the columns see them, IR drop included, in siemens (float64)."""
        positive, negative = self.positive_s, self.negative_s
        resistance_ohm = self.config.wire_resistance_ohm
        if resistance_ohm == 0:
            return positive, negative
        solve = exact_effective_conductance if self.config.ir_drop == "exact" else approximate_effective_conductance
        positive, negative = positive.clone(), negative.clone()
        for tile in self.tiles:
            block = (tile.group, slice(tile.row_start, tile.row_start + tile.rows), slice(tile.col_start, tile.col_start + tile.cols))
            # Physical layout of the tile: column 2j is G+ and column 2j + 1 is G- of weight column j.
            physical = torch.stack([positive[block], negative[block]], dim=-1).reshape(tile.rows, 2 * tile.cols)
            physical = physical.cpu().numpy()
            effective = solve(physical, resistance_ohm)
            if solve is approximate_effective_conductance:
                check_first_order(physical, effective, resistance_ohm)
            effective = torch.from_numpy(effective).reshape(tile.rows, tile.cols, 2)
            positive[block] = effective[..., 0].to(positive.device)
            negative[block] = effective[..., 1].to(negative.device)
        return positive, negative

    @property
    def pair_columns(self) -> bool:
        """Whether the ADC digitizes G+ and G- columns separately (digital subtraction with a real ADC)."""
        return self.config.pair_subtraction == "digital" and self.config.adc_bits is not None

    def _units(self) -> tuple[float, float]:
        """Return (volts per kernel input unit, amperes per kernel output unit) of the present stage.

        With a real DAC the convolution input is the DAC code, or for bit-serial input the plane
        value of -1, 0 or 1 at the read voltage. With a real ADC the convolution output is in ADC
        steps. So the converter scales live in the kernels and cost no pass over the data.
        """
        dac, adc = self.dac(), self.adc(plane=self.config.bit_serial)
        if self.config.bit_serial and dac.bits is not None:
            input_v = self.config.read_voltage_v
        else:
            input_v = dac.step if dac.bits is not None else 1.0
        return input_v, adc.step if adc.bits is not None else 1.0

    def prepare(self) -> None:
        """Rebuild the convolution kernels from the conductances and calibration; call after changing either."""
        positive, negative = self.effective_pairs()
        if self.pair_columns:
            signal = torch.stack([positive, negative], dim=1)
            variance = signal**2
        else:
            # The difference is taken in float64 so that small weights keep their precision in float32.
            signal = (positive - negative).unsqueeze(1)
            variance = (positive**2 + negative**2).unsqueeze(1)
        input_v, output_a = self._units()
        gain = input_v / output_a
        sigma = self.config.read_noise
        variance = variance * (sigma * gain) ** 2
        self._store("signal", [set_kernel(signal * gain, block_set, self.kernel_size) for block_set in self.block_sets])
        exact = sigma > 0 and self.config.read_noise_variance == "exact"
        column_mean = sigma > 0 and not exact
        # The variance only sets the spread of the drawn noise. bfloat16 rounds inputs, weights and
        # outputs by at most 0.2 % each, so the spread is off by well under 1 %, and this second
        # convolution runs several times faster on CPUs with bfloat16 instructions.
        self._store("variance", [set_kernel(variance, block_set, self.kernel_size).to(torch.bfloat16) if exact else None
                                 for block_set in self.block_sets])
        # Column-mean variance: the row power sum(v**2) of each block (bfloat16 sums of squares, off by
        # at most 0.4 %), times each column's mean (sigma * G)**2.
        rows = torch.ones_like(positive[:, None, :, :1])
        self._store("power", [set_kernel(rows, block_set, self.kernel_size).to(torch.bfloat16) if column_mean else None
                              for block_set in self.block_sets])
        self._store("column_variance", [block_means(variance, block_set) if column_mean else None for block_set in self.block_sets])
        channels_per_group = self.spec.matrix_rows // (self.kernel_size[0] * self.kernel_size[1])
        self._store("channels", [channel_index(block_set, self.spec.groups, channels_per_group, self.positive_s.device)
                                 for block_set in self.block_sets])

    def _store(self, name: str, tensors: list[torch.Tensor | None]) -> None:
        """Keep one tensor per block set as non-persistent buffers, so that ``to()`` moves them."""
        for index, tensor in enumerate(tensors):
            self.register_buffer(f"_{name}_{index}", tensor, persistent=False)

    def _stored(self, name: str, index: int | None = None):
        """Return the tensor of block set ``index`` kept under ``name``, or the list over all sets for None."""
        if index is not None:
            return getattr(self, f"_{name}_{index}")
        return [getattr(self, f"_{name}_{index}") for index in range(len(self.block_sets))]

    def set_conductances(self, positive_s, negative_s) -> None:
        """Replace the measured conductances (after a new read of the arrays) and rebuild the kernels."""
        for buffer, values in ((self.positive_s, positive_s), (self.negative_s, negative_s)):
            values = torch.as_tensor(np.asarray(values), dtype=torch.float64)
            if values.shape != buffer.shape:
                raise ConfigError(f"layer {self.spec.name!r}: conductances of shape {tuple(values.shape)} do not match {tuple(buffer.shape)}")
            buffer.copy_(values)
        self.prepare()

    # Converters.

    def dac(self) -> Quantizer:
        """Return the row DAC, which is ideal while the input range is being calibrated."""
        if self.calibrating == "input":
            return Quantizer(None, 1.0)
        signed = bool(self.input_signed)
        full_scale_v = self.config.read_voltage_v * (2 if signed else 1)
        return Quantizer(self.config.dac_bits, full_scale_v, signed)

    def adc(self, plane: bool = False) -> Quantizer:
        """Return the column ADC (for bit-serial plane reads if ``plane``), which is ideal until calibrated."""
        range_a = float(self.plane_adc_range_a if plane else self.adc_range_a)
        if self.config.adc_bits is None or self.calibrating is not None or range_a <= 0:
            return Quantizer(None, 1.0)
        # Each column of a pair carries the sign of the inputs; a pair difference carries either sign.
        signed = not self.pair_columns or bool(self.input_signed)
        return Quantizer(self.config.adc_bits, range_a, signed)

    def _check_calibrated(self) -> None:
        needs_adc = self.config.adc_bits is not None and self.calibrating is None
        range_a = self.plane_adc_range_a if self.config.bit_serial else self.adc_range_a
        if needs_adc and float(range_a) <= 0:
            if self._calibrated:
                raise ConfigError(f"layer {self.spec.name!r} gave no column current during calibration, so its ADC has no range; "
                                  "check that the calibration images reach this layer with nonzero inputs")
            raise ConfigError(f"layer {self.spec.name!r} has no ADC range: calibrate the analog network before running it with adc_bits set")

    # Computation.

    def _convolve(self, inputs: torch.Tensor, kernel: torch.Tensor, block_set: BlockSet) -> torch.Tensor:
        spec = self.spec
        inputs = canonical_channels_last(inputs)
        groups = spec.groups * len(block_set.blocks)
        if spec.kind == "linear":
            return F.conv2d(inputs, kernel, groups=groups)
        left, right, top, bottom = spec.padding_lrtb
        if spec.padding_mode == "zeros" and left == right and top == bottom:
            return F.conv2d(inputs, kernel, stride=spec.stride, padding=(top, left), dilation=spec.dilation, groups=groups)
        return F.conv2d(inputs, kernel, stride=spec.stride, dilation=spec.dilation, groups=groups)

    def _pad(self, inputs: torch.Tensor) -> torch.Tensor:
        """Apply padding that the convolution call cannot (asymmetric or not zeros)."""
        spec = self.spec
        left, right, top, bottom = spec.padding_lrtb
        if spec.kind == "linear" or not any(spec.padding_lrtb):
            return inputs
        if spec.padding_mode == "zeros" and left == right and top == bottom:
            return inputs
        mode = "constant" if spec.padding_mode == "zeros" else spec.padding_mode
        return F.pad(inputs, spec.padding_lrtb, mode=mode)

    def _generator_for(self, like: torch.Tensor) -> torch.Generator | None:
        generator = self.noise_generator
        if generator is not None and generator.device != like.device:
            raise ConfigError(f"the read-noise generator is on {generator.device} but the layer runs on {like.device}; "
                              "call AnalogNetwork.to() to move both")
        return generator

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        return standard_normal(like.shape, self._generator_for(like), like)

    def _noise_keys(self, like: torch.Tensor) -> torch.Tensor:
        """Return the keys of one counter-based noise draw per block set (compiled path), on ``like``'s device."""
        generator = self._generator_for(like)
        return torch.stack([draw_key(generator, like.device) for _ in self.block_sets])

    @property
    def _square_dtype(self) -> torch.dtype | None:
        """Dtype of the squared inputs the read-noise variance needs; None without read noise."""
        return torch.bfloat16 if self.config.read_noise > 0 else None

    def _gather(self, inputs: torch.Tensor, channels: torch.Tensor | None) -> torch.Tensor:
        """Select a block set's input channels, in channels-last memory order.

        Grouped convolutions run about twice as fast on channels-last tensors on CPUs. Gathering
        along the last axis of the NHWC view writes the result in that order at no extra cost.
        """
        if channels is None:
            gathered = inputs.contiguous(memory_format=torch.channels_last)
        else:
            gathered = inputs.permute(0, 2, 3, 1).index_select(3, channels).permute(0, 3, 1, 2)
        return self._pad(gathered)

    def tile_currents(self, inputs, squared=None, gathered: bool = False) -> list[SetCurrents]:
        """Return, per block set, the noiseless column currents of every tile and the variance of their read noise.

        Currents have the shape ``(N, H, W, groups, blocks, parts, matrix_cols)`` and the kernel units
        of :meth:`_units`. ``parts`` is 2 (G+ then G-) when the ADC digitizes each column, else 1 (the
        pair current). ``squared`` is ``inputs**2`` in :attr:`_square_dtype` where the caller has it.
        With ``gathered``, the caller passes lists with each set's channels already selected (see
        :meth:`_gather`); otherwise one tensor of the layer's inputs.
        """
        results = []
        for index, channels in enumerate(self._stored("channels")):
            if gathered:
                values = self._pad(inputs[index])
                squares = None if squared is None else self._pad(squared[index])
            else:
                values, squares = self._gather(inputs, channels), None
            if self._square_dtype is not None and squares is None:
                squares = values.square().to(self._square_dtype)
            results.append(SetCurrents(self.signal_currents(index, values), *self.noise_variance(index, squares)))
        return results

    def signal_currents(self, index: int, values: torch.Tensor) -> torch.Tensor:
        """Noiseless column currents of block set ``index`` for its gathered, padded inputs."""
        block_set = self.block_sets[index]
        return self._split_outputs(self._convolve(values, self._stored("signal", index), block_set), block_set)

    def noise_variance(self, index: int, squares: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Read-noise variance of block set ``index`` from its squared inputs, in the form :class:`SetCurrents` keeps."""
        block_set = self.block_sets[index]
        variance_kernel, power = self._stored("variance", index), self._stored("power", index)
        if variance_kernel is not None:
            return self._split_outputs(self._convolve(squares, variance_kernel, block_set), block_set), None
        if power is not None:
            # The fused ADC loop runs about 1.4 times faster on a float32 row power than on a bfloat16 one.
            row_power = self._split_outputs(self._convolve(squares, power, block_set), block_set, columns=1).float()
            return row_power, self._stored("column_variance", index)
        return None, None

    def _split_outputs(self, outputs: torch.Tensor, block_set: BlockSet, columns: int | None = None) -> torch.Tensor:
        """Return convolution outputs as a contiguous ``(N, H, W, groups, blocks, parts, columns)`` tensor.

        The convolutions write channels-last outputs, so this is a view; the fused loops that follow
        run fastest over contiguous memory. ``columns`` 1 reads one output per block (the row power).
        """
        parts = 2 if self.pair_columns and columns is None else 1
        batch, _, height, width = outputs.shape
        nhwc = outputs.permute(0, 2, 3, 1).contiguous()
        return nhwc.view(batch, height, width, self.spec.groups, len(block_set.blocks), parts, columns or self.spec.matrix_cols)

    def _digitize(self, sets: list[SetCurrents], plane: bool, gain: torch.Tensor | None = None) -> torch.Tensor:
        """Add read noise, digitize, subtract pairs and sum tile partial results: ``(N, H, W, groups, cols)``.

        Works in place on the currents. With a real ADC the values are in ADC steps and the result
        is a sum of codes. With ``gain`` (one factor per output, see :meth:`_unit_gain`), the
        result is in layer units: the sums times the gain, plus the bias.
        """
        adc = self.adc(plane)
        conversions = sum(entry.currents.numel() for entry in sets)
        bias = None if gain is None else self._bias_matrix()
        if self.config.compile and adc.bits is not None and max(entry.currents.numel() for entry in sets) < MAX_ELEMENTS:
            like = sets[0].currents
            limits = torch.tensor([adc.code_min, adc.code_max], dtype=like.dtype, device=like.device)
            noisy = sets[0].variance is not None
            output, saturated = compiled(digitize_codes, INLINE_NOISE)(
                [entry.currents for entry in sets], [entry.variance for entry in sets], [entry.column_variance for entry in sets],
                self._noise_keys(like) if noisy else None, limits[0], limits[1], gain, bias)
            self.adc_saturation.add(conversions, saturated)
            return output

        for entry in sets:
            if entry.variance is not None:
                variance = full_variance(entry.variance, entry.column_variance)
                entry.currents.addcmul_(variance.sqrt_(), self._noise(entry.currents))
        if self.calibrating == "adc":
            self._record("plane_adc" if plane else "adc", torch.cat([entry.currents.reshape(-1) for entry in sets]))
        saturated = 0
        if adc.bits is not None:
            for entry in sets:
                codes = entry.currents.round_()
                low, high = torch.aminmax(codes)
                if float(low) < adc.code_min or float(high) > adc.code_max:
                    saturated = saturated + torch.count_nonzero(codes < adc.code_min) + torch.count_nonzero(codes > adc.code_max)
                    codes.clamp_(adc.code_min, adc.code_max)
            self.adc_saturation.add(conversions, saturated)
        summed = sets[0].currents.sum(dim=4)
        for entry in sets[1:]:
            summed += entry.currents.sum(dim=4)
        return scale_outputs(subtract_pairs(summed), gain, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_calibrated()
        batch = x.shape[0]
        if self.spec.kind == "linear":
            if x.dim() != 2:
                raise ConfigError(f"layer {self.spec.name!r}: analog Linear layers take (batch, features) inputs, got shape {tuple(x.shape)}; "
                                  "keep this layer digital with keep_digital")
            x = x.reshape(batch, -1, 1, 1)
        if self.calibrating == "input":
            self._record("input", x)
        volts_per_input = self.config.read_voltage_v / float(self.input_range)
        dac = self.dac()
        input_v, output_a = self._units()

        if dac.bits is None:
            output = self._digitize(self.tile_currents(x * volts_per_input), plane=False, gain=self._unit_gain(output_a))
        elif self.config.compile and not self.config.bit_serial:
            scale, code_min, code_max = torch.tensor([volts_per_input / dac.step, dac.code_min, dac.code_max], dtype=x.dtype, device=x.device)
            codes, squared, saturated = compiled(quantize_inputs)(x, scale, code_min, code_max, self._square_dtype, self._stored("channels"))
            self.dac_saturation.add(x.numel(), saturated)
            output = self._digitize(self.tile_currents(codes, squared, gathered=True), plane=False, gain=self._unit_gain(output_a))
        else:
            codes, saturated = dac.codes(x, volts_per_input)
            self.dac_saturation.add(codes.numel(), saturated)
            if self.config.bit_serial:
                total = None
                for bit, plane in enumerate(bit_planes(codes, dac.bits)):
                    partial = self._digitize(self.tile_currents(plane), plane=True).mul_(2**bit)
                    total = partial if total is None else total.add_(partial)
                # Plane reads run at the full read voltage; a code step is dac.step volts.
                output_a *= dac.step / self.config.read_voltage_v
                output = scale_outputs(total, self._unit_gain(output_a), self._bias_matrix())
            else:
                output = self._digitize(self.tile_currents(codes), plane=False, gain=self._unit_gain(output_a))
        return self._layer_layout(output, batch)

    def _unit_gain(self, output_a: float) -> torch.Tensor:
        """Return the layer output per unit of summed output (``output_a`` amperes) with the drift gain, ``(groups, cols)``."""
        scale = output_a * self.weight_scale * float(self.input_range) / self.config.read_voltage_v
        return (self.output_gain * scale).view(self.spec.groups, -1)

    def _bias_matrix(self) -> torch.Tensor | None:
        """Return the bias shaped ``(groups, cols)`` like the summed outputs, or None without a bias."""
        return None if self.bias is None else self.bias.view(self.spec.groups, -1)

    def _layer_layout(self, output: torch.Tensor, batch: int) -> torch.Tensor:
        """Lay out ``(N, H, W, groups, cols)`` outputs as the layer's: NCHW (channels-last memory) or ``(N, features)``."""
        output = output.reshape(batch, *output.shape[1:3], self.spec.weight_shape[0]).permute(0, 3, 1, 2)
        return output.reshape(batch, -1) if self.spec.kind == "linear" else output

    # Calibration.

    def _record(self, name: str, values: torch.Tensor) -> None:
        """Keep the largest per-batch percentile of ``|values|`` (and, for inputs, whether any is negative)."""
        flat = values.detach().reshape(-1)
        if name == "input":
            self._calibration_stats["input_min"] = min(self._calibration_stats.get("input_min", 0.0), float(flat.min()))
        magnitude = flat.abs()
        if self.config.calibration_percentile >= 100:
            level = float(magnitude.max())
        else:
            if magnitude.numel() > CALIBRATION_SAMPLES:
                magnitude = magnitude[:: magnitude.numel() // CALIBRATION_SAMPLES + 1]
            rank = max(1, min(magnitude.numel(), round(self.config.calibration_percentile / 100 * magnitude.numel())))
            level = float(torch.kthvalue(magnitude.float(), rank).values)
        self._calibration_stats[name] = max(self._calibration_stats.get(name, 0.0), level)

    def finish_input_calibration(self) -> None:
        """Fix the DAC input range from the recorded inputs."""
        level = self._calibration_stats.get("input", 0.0)
        self.input_range.fill_(level if level > 0 else 1.0)
        self.input_signed.fill_(self._calibration_stats.get("input_min", 0.0) < 0)

    def finish_adc_calibration(self) -> None:
        """Fix the ADC ranges from the recorded tile currents: ``2 * level`` signed, ``level`` unsigned."""
        self._calibrated = True
        signed = not self.pair_columns or bool(self.input_signed)
        for name, buffer in (("adc", self.adc_range_a), ("plane_adc", self.plane_adc_range_a)):
            level = self._calibration_stats.get(name, 0.0)
            if level > 0:
                buffer.fill_(2 * level if signed else level)
        self._calibration_stats = {}

    # Drift.

    def reference_currents_a(self) -> torch.Tensor:
        """Return the reference-read current per output column, in amperes.

        The reference read drives every row at ``read_voltage_v`` and sums G+ and G- of each pair
        minus twice the window minimum. The result tracks how far the cells sit above the level that
        drift relaxes toward, whatever the sign of the weights.
        """
        excess = self.positive_s + self.negative_s - 2 * self.conductance_min_s
        return (self.config.read_voltage_v * excess.sum(dim=1)).reshape(-1)

    def record_drift_reference(self) -> None:
        self.drift_reference_a.copy_(self.reference_currents_a())

    def compensate_drift(self, mode: str) -> None:
        """Set the output gain from a new reference read: ``none``, ``global`` or ``column``."""
        present = self.reference_currents_a()
        reference = self.drift_reference_a
        if mode == "none" or not bool(reference.any()):
            self.output_gain.fill_(1.0)
            return
        if mode == "global":
            self.output_gain.fill_(float(reference.sum() / present.sum()) if float(present.sum()) > 0 else 1.0)
            return
        # Columns whose cells all sit at the window minimum carry no signal to scale; they keep gain 1.
        usable = present > 1e-9 * float(present.abs().max())
        gain = torch.where(usable, reference / torch.where(usable, present, torch.ones_like(present)), torch.ones_like(present))
        self.output_gain.copy_(gain.float())
