"""A Conv2d or Linear layer computed as the crossbar tiles compute it, batched over images and windows.

Signal chain of one forward pass:

1. The DAC turns the layer input into row read voltages: ``v = x * read_voltage_v / input_range``,
   quantized to ``dac_bits`` (optionally sent bit-serially, one bit plane per read).
2. Every tile multiplies its block of input rows by its block of conductances. All tiles of the layer
   run as one grouped convolution: each row block of each group becomes one convolution group whose
   kernel holds the block's conductances and zeros elsewhere, so no Python loop runs per image,
   window or tile.
3. Read noise is drawn per output: independent Gaussian cell noise on a column sums to one Gaussian
   whose variance is ``v**2 @ (sigma * G)**2``, one more convolution.
4. The ADC digitizes each tile's column currents (the pair current ``I+ - I-``, or each column
   before a digital subtraction). Tile partial results are then summed digitally.
5. The sum is scaled back to layer units (weight per siemens, input per volt), multiplied by the
   drift-compensation gain, and the bias is added digitally.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cim_runtime.analog.config import AnalogConfig
from cim_runtime.analog.converters import Quantizer, SaturationCounter, bit_planes
from cim_runtime.analog.counter_noise import MAX_ELEMENTS, counter_normal, draw_key
from cim_runtime.analog.ir_drop import approximate_effective_conductance, check_first_order, exact_effective_conductance
from cim_runtime.errors import ConfigError
from cim_runtime.mapping import LayerSpec, Tile

#: Channel count that grouped convolution groups are padded to a multiple of.
CHANNEL_ALIGNMENT = 16

#: Values sampled from one batch to estimate a calibration percentile.
CALIBRATION_SAMPLES = 1 << 18


def digitize_codes(currents: torch.Tensor, variance: torch.Tensor | None, key: torch.Tensor | None,
                   code_min: torch.Tensor, code_max: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Add noise drawn from ``key``, round to codes, count and clip saturated codes, and sum over row blocks (dimension 4)."""
    values = currents if variance is None else currents + variance.float().sqrt() * counter_normal(currents, key)
    values = torch.round(values)
    saturated = ((values < code_min) | (values > code_max)).sum()
    return values.clamp(code_min, code_max).sum(dim=4), saturated


def quantize_inputs(values: torch.Tensor, scale: torch.Tensor, code_min: torch.Tensor, code_max: torch.Tensor,
                    square: bool, channels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Return the DAC codes of ``values * scale``, gathered and channels-last, their bfloat16 squares, and the saturated count.

    ``channels`` selects the input channels of the convolution groups (None for all), as
    :meth:`AnalogLayer._gather` does; the saturated count covers each input once.
    """
    raw = torch.round(values * scale)
    saturated = ((raw < code_min) | (raw > code_max)).sum()
    nhwc = values.permute(0, 2, 3, 1)
    if channels is not None:
        nhwc = nhwc.index_select(3, channels)
    codes = torch.round(nhwc * scale).clamp(code_min, code_max).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    squared = (codes * codes).to(torch.bfloat16) if square else None
    return codes, squared, saturated


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


_compiled: dict[str, object] = {}


def compiled(function):
    """Return ``function`` compiled by ``torch.compile`` into fused loops, compiling on first use."""
    # NOTE: pass code limits and scales as 0-d tensors. With torch 2.14.1, a compiled function called
    # first with float limits -128 and 127 kept clipping at 127 when later called with 0 and 255.
    if function.__name__ not in _compiled:
        # On machines without CUDA, torch warns once that it found no CUDA runtime. The CPU loops
        # compiled here do not need one, so the warning would only mislead.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        _compiled[function.__name__] = torch.compile(function, dynamic=True)
    return _compiled[function.__name__]


def canonical_channels_last(values: torch.Tensor) -> torch.Tensor:
    """Return ``values`` in channels-last memory order with the standard strides.

    Where a dimension has size 1 its stride is arbitrary, and oneDNN picks its algorithm, and so its
    summation order, from the strides. Equal strides make the eager and the compiled paths agree bit
    for bit.
    """
    values = values.contiguous(memory_format=torch.channels_last)
    batch, channels, height, width = values.shape
    return values.as_strided(values.shape, (channels * height * width, 1, width * channels, channels))


def row_blocks(spec: LayerSpec, tiles: list[Tile]) -> list[tuple[int, int]]:
    """Return the (row_start, rows) blocks the tiles cut each group's matrix into, in row order."""
    blocks = sorted({(tile.row_start, tile.rows) for tile in tiles})
    covered = 0
    for row_start, rows in blocks:
        if row_start != covered:
            raise ConfigError(f"the tiles of layer {spec.name!r} do not cover matrix rows {covered} to {row_start - 1}")
        covered = row_start + rows
    if covered != spec.matrix_rows:
        raise ConfigError(f"the tiles of layer {spec.name!r} cover {covered} of its {spec.matrix_rows} matrix rows")
    return blocks


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

    def _block_channels(self) -> tuple[list[int], int]:
        """Return the first input channel of each row block and the most channels any block spans."""
        per_channel = self.kernel_size[0] * self.kernel_size[1]
        firsts = [row_start // per_channel for row_start, _ in self.blocks]
        spans = [(row_start + rows - 1) // per_channel - first + 1 for (row_start, rows), first in zip(self.blocks, firsts)]
        span = max(spans)
        if len(self.blocks) > 1 and span >= CHANNEL_ALIGNMENT:
            # oneDNN's grouped bfloat16 convolutions run about twice as fast on channel counts that are
            # multiples of 16; the extra channels carry zero kernel weights.
            span = -(-span // CHANNEL_ALIGNMENT) * CHANNEL_ALIGNMENT
        return firsts, span

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

    def _kernel(self, matrices: torch.Tensor) -> torch.Tensor:
        """Lay out ``(groups, parts, matrix_rows, matrix_cols)`` matrices as a grouped-convolution kernel.

        Convolution group ``(g, b)`` reads the input channels of row block ``b`` of group ``g``. It
        produces ``parts * matrix_cols`` outputs, and its kernel entries of rows outside the block are zero.
        """
        groups, parts = matrices.shape[:2]
        kernel_h, kernel_w = self.kernel_size
        per_channel = kernel_h * kernel_w
        firsts, span = self._block_channels()
        kernel = matrices.new_zeros(groups, len(self.blocks), parts, self.spec.matrix_cols, span * per_channel)
        for index, ((row_start, rows), first) in enumerate(zip(self.blocks, firsts)):
            offset = row_start - first * per_channel
            kernel[:, index, :, :, offset : offset + rows] = matrices[:, :, row_start : row_start + rows].transpose(-1, -2)
        return kernel.reshape(-1, span, kernel_h, kernel_w).float().contiguous(memory_format=torch.channels_last)

    def _channel_index(self) -> torch.Tensor | None:
        """Input channels gathered for the grouped convolution; None when it is the identity."""
        firsts, span = self._block_channels()
        channels_per_group = self.spec.matrix_rows // (self.kernel_size[0] * self.kernel_size[1])
        index = []
        for group in range(self.spec.groups):
            for first in firsts:
                # Channels past the group's end carry zero kernel weights; any valid channel will do.
                local = np.minimum(first + np.arange(span), channels_per_group - 1)
                index.append(group * channels_per_group + local)
        index = np.concatenate(index)
        if index.size == self.spec.groups * channels_per_group and np.array_equal(index, np.arange(index.size)):
            return None
        return torch.from_numpy(index).to(self.positive_s.device)

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
        self.register_buffer("_signal_kernel", self._kernel(signal * gain), persistent=False)
        sigma = self.config.read_noise
        # The variance only sets the spread of the drawn noise. bfloat16 rounds inputs, weights and
        # outputs by at most 0.2 % each, so the spread is off by well under 1 %, and this second
        # convolution runs several times faster on CPUs with bfloat16 instructions.
        variance_kernel = self._kernel(variance * (sigma * gain) ** 2).to(torch.bfloat16) if sigma > 0 else None
        self.register_buffer("_variance_kernel", variance_kernel, persistent=False)
        self.register_buffer("_channel_gather", self._channel_index(), persistent=False)

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

    def _convolve(self, inputs: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        inputs = canonical_channels_last(inputs)
        groups = spec.groups * len(self.blocks)
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

    def _noise_key(self, like: torch.Tensor) -> torch.Tensor:
        """Return the key of one counter-based noise draw (compiled path), moved to ``like``'s device."""
        return draw_key(self._generator_for(like), like.device)

    def _gather(self, inputs: torch.Tensor) -> torch.Tensor:
        """Select each convolution group's input channels, in channels-last memory order.

        Grouped convolutions run about twice as fast on channels-last tensors on CPUs. Gathering
        along the last axis of the NHWC view writes the result in that order at no extra cost.
        """
        if self._channel_gather is None:
            gathered = inputs.contiguous(memory_format=torch.channels_last)
        else:
            gathered = inputs.permute(0, 2, 3, 1).index_select(3, self._channel_gather).permute(0, 3, 1, 2)
        return self._pad(gathered)

    def tile_currents(self, inputs: torch.Tensor, squared: torch.Tensor | None = None,
                      gathered: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the noiseless column currents of every tile and the variance of their read noise.

        Both have the shape ``(N, H, W, groups, blocks, parts, matrix_cols)`` and the kernel units of
        :meth:`_units` (the variance in bfloat16, None without read noise). ``parts`` is 2 (G+ then
        G-) when the ADC digitizes each column, else 1 (the pair current). ``squared`` is
        ``inputs**2`` in bfloat16 where the caller has it already. ``gathered`` says that the caller
        has already selected the groups' channels (see :meth:`_gather`) of both.
        """
        if gathered:
            inputs = self._pad(inputs)
            squared = None if squared is None else self._pad(squared)
        else:
            inputs = self._gather(inputs)
            squared = None if squared is None else self._gather(squared)
        currents = self._convolve(inputs, self._signal_kernel)
        variance = None
        if self._variance_kernel is not None:
            squared = inputs.square().to(torch.bfloat16) if squared is None else squared
            variance = self._convolve(squared, self._variance_kernel)
        return self._split_outputs(currents), None if variance is None else self._split_outputs(variance)

    def _split_outputs(self, outputs: torch.Tensor) -> torch.Tensor:
        """Return convolution outputs as a contiguous ``(N, H, W, groups, blocks, parts, matrix_cols)`` tensor.

        The convolutions write channels-last outputs, so this is a view; the fused loops that follow
        run fastest over contiguous memory.
        """
        parts = 2 if self.pair_columns else 1
        batch, _, height, width = outputs.shape
        nhwc = outputs.permute(0, 2, 3, 1).contiguous()
        return nhwc.view(batch, height, width, self.spec.groups, len(self.blocks), parts, self.spec.matrix_cols)

    def _digitize(self, currents: torch.Tensor, variance: torch.Tensor | None, plane: bool) -> torch.Tensor:
        """Add read noise, digitize, subtract pairs and sum tile partial results: ``(N, H, W, groups, cols)``.

        Works in place on ``currents``. With a real ADC the values are in ADC steps and the result is
        a sum of codes.
        """
        adc = self.adc(plane)
        if self.config.compile and adc.bits is not None and currents.numel() < MAX_ELEMENTS:
            limits = torch.tensor([adc.code_min, adc.code_max], dtype=currents.dtype, device=currents.device)
            key = None if variance is None else self._noise_key(currents)
            summed, saturated = compiled(digitize_codes)(currents, variance, key, limits[0], limits[1])
            self.adc_saturation.add(currents.numel(), saturated)
            return summed[..., 0, :] - summed[..., 1, :] if summed.shape[-2] == 2 else summed[..., 0, :]

        noise = None if variance is None else self._noise(currents)
        if variance is not None:
            currents.addcmul_(variance.float().sqrt_(), noise)
        if self.calibrating == "adc":
            self._record("plane_adc" if plane else "adc", currents)
        if adc.bits is not None:
            codes = currents.round_()
            low, high = torch.aminmax(codes)
            if float(low) < adc.code_min or float(high) > adc.code_max:
                saturated = torch.count_nonzero(codes < adc.code_min) + torch.count_nonzero(codes > adc.code_max)
                self.adc_saturation.add(codes.numel(), saturated)
                codes.clamp_(adc.code_min, adc.code_max)
            else:
                self.adc_saturation.add(codes.numel(), 0)
        summed = currents.sum(dim=4)
        return summed[..., 0, :] - summed[..., 1, :] if summed.shape[-2] == 2 else summed[..., 0, :]

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
            total = self._digitize(*self.tile_currents(x * volts_per_input), plane=False)
        elif self.config.compile and not self.config.bit_serial:
            scale, code_min, code_max = torch.tensor([volts_per_input / dac.step, dac.code_min, dac.code_max], dtype=x.dtype, device=x.device)
            codes, squared, saturated = compiled(quantize_inputs)(x, scale, code_min, code_max, self._variance_kernel is not None,
                                                                  self._channel_gather)
            self.dac_saturation.add(x.numel(), saturated)
            total = self._digitize(*self.tile_currents(codes, squared, gathered=True), plane=False)
        else:
            codes, saturated = dac.codes(x, volts_per_input)
            self.dac_saturation.add(codes.numel(), saturated)
            if self.config.bit_serial:
                total = None
                for bit, plane in enumerate(bit_planes(codes, dac.bits)):
                    partial = self._digitize(*self.tile_currents(plane), plane=True).mul_(2**bit)
                    total = partial if total is None else total.add_(partial)
                # Plane reads run at the full read voltage; a code step is dac.step volts.
                output_a *= dac.step / self.config.read_voltage_v
            else:
                total = self._digitize(*self.tile_currents(codes), plane=False)
        return self._to_layer_units(total, batch, output_a)

    def _to_layer_units(self, total: torch.Tensor, batch: int, output_a: float) -> torch.Tensor:
        """Scale summed outputs (in units of ``output_a`` amperes) to layer outputs; apply drift gain and bias."""
        scale = output_a * self.weight_scale * float(self.input_range) / self.config.read_voltage_v
        output = total.reshape(batch, *total.shape[1:3], self.spec.weight_shape[0]).permute(0, 3, 1, 2)
        shape = (1, -1, *([1] * (output.dim() - 2)))
        output = output * (self.output_gain * scale).view(shape)
        if self.bias is not None:
            output = output.add_(self.bias.view(shape))
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
