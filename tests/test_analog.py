"""Analog inference: converters, IR drop, the batched tile path against driver.mvm, drift, save and load."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from cim_runtime.analog import (
    AnalogConfig,
    AnalogLayer,
    Quantizer,
    calibrate,
    convert,
    from_driver,
    load_analog,
    read_after_drift,
    save_analog,
)
from cim_runtime.analog.converters import bit_planes
from cim_runtime.analog.layer import PARALLEL_NOISE_SIZE, standard_normal
from cim_runtime.analog.ir_drop import approximate_effective_conductance, exact_effective_conductance, nodal_currents
from cim_runtime.analog.reference import forward_through_driver
from cim_runtime.device import make_profile
from cim_runtime.driver import SimulatorDriver
from cim_runtime.errors import ConfigError
from cim_runtime.mapping import ConductanceWindow
from cim_runtime.pipeline import map_for_driver
from cim_runtime.programming import write_verify

WINDOW = ConductanceWindow(1.43e-3, 3.38e-3)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).detach().norm() / expected.detach().norm())


def small_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv2d(6, 8, (3, 2), padding=(1, 0), groups=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 3, 5),
    ).eval()


def convert_small(config: AnalogConfig, tile: int = 16) -> nn.Module:
    return convert(small_network(), window=WINDOW, tile_rows=tile, tile_cols=tile, array_rows=32, array_cols=32,
                   config=config, example_input=torch.randn(1, 3, 8, 8))


# Converters.


@pytest.mark.parametrize(("bits", "range_", "signed"), [(8, 0.2, True), (8, 1e-4, False), (3, 1.0, True), (12, 3e-6, False)])
def test_quantizer_step_is_range_over_levels(bits, range_, signed):
    quantizer = Quantizer(bits, range_, signed)
    assert quantizer.step == range_ / 2**bits
    values = torch.linspace(-range_, range_, 1001, dtype=torch.float64)
    quantized, _ = quantizer(values)
    codes = quantized / quantizer.step
    assert torch.allclose(codes, codes.round(), atol=1e-9)
    assert codes.min() >= quantizer.code_min
    assert codes.max() <= quantizer.code_max
    assert quantizer.code_max - quantizer.code_min == 2**bits - 1


def test_quantizer_counts_saturation():
    quantizer = Quantizer(4, 1.6, signed=True)
    values = torch.tensor([-0.9, -0.8, 0.0, 0.7, 0.75, 2.0])
    quantized, saturated = quantizer(values)
    # Codes run from -8 to 7 at 0.1 per step: -0.9 and 0.75 and 2.0 fall outside.
    assert int(saturated) == 3
    assert torch.allclose(quantized, torch.tensor([-0.8, -0.8, 0.0, 0.7, 0.7, 0.7]))


def test_ideal_quantizer_passes_values():
    values = torch.randn(10)
    quantized, saturated = Quantizer(None, 1.0)(values)
    assert torch.equal(quantized, values)
    assert int(saturated) == 0


def test_bit_planes_rebuild_codes():
    codes = torch.arange(-128, 128, dtype=torch.float32)
    planes = bit_planes(codes, 8)
    assert torch.equal(sum(2**bit * plane for bit, plane in enumerate(planes)), codes)
    assert all(set(plane.unique().tolist()) <= {-1.0, 0.0, 1.0} for plane in planes)


@pytest.mark.parametrize("settings", [dict(dac_bits=0), dict(adc_bits=25), dict(bit_serial=True), dict(ir_drop="spice"),
                                      dict(calibration_percentile=0), dict(read_voltage_v=0)])
def test_invalid_config_is_rejected(settings):
    with pytest.raises(ConfigError):
        AnalogConfig(**settings)


def test_config_dict_round_trip_rejects_unknown_keys():
    config = AnalogConfig(dac_bits=8, adc_bits=6, bit_serial=True)
    assert AnalogConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown analog settings"):
        AnalogConfig.from_dict({"adc_bit": 8})


# IR drop.


def test_ir_drop_approximation_tracks_exact_solve():
    conductance = np.random.default_rng(0).uniform(WINDOW.conductance_min_s, WINDOW.conductance_max_s, (24, 16))
    exact = exact_effective_conductance(conductance, 0.01)
    approximate = approximate_effective_conductance(conductance, 0.01)
    drop = np.abs(exact - conductance).max()
    assert drop > 1e-3 * conductance.max()
    assert np.abs(approximate - exact).max() < 0.05 * drop
    assert np.all(exact < conductance)


def test_ir_drop_effective_matrix_is_linear_map():
    rng = np.random.default_rng(1)
    conductance = rng.uniform(1e-4, 1e-3, (12, 10))
    voltages_v = rng.uniform(-0.1, 0.1, (4, 12))
    currents = nodal_currents(conductance, voltages_v, 0.5)
    assert np.allclose(currents, voltages_v @ exact_effective_conductance(conductance, 0.5), rtol=1e-9, atol=1e-18)


def test_ir_drop_without_wire_resistance_is_ideal():
    conductance = np.random.default_rng(2).uniform(1e-4, 1e-3, (5, 4))
    assert np.array_equal(exact_effective_conductance(conductance, 0.0), conductance)
    assert np.array_equal(approximate_effective_conductance(conductance, 0.0), conductance)


def test_layer_ir_drop_models_agree():
    x = torch.randn(2, 3, 8, 8)
    outputs = {}
    for model in ("approximate", "exact"):
        analog = convert_small(AnalogConfig(wire_resistance_ohm=0.005, ir_drop=model))
        with torch.no_grad():
            outputs[model] = analog(x)
    ideal = small_network()(x)
    drop = relative_error(outputs["exact"], ideal)
    assert drop > 1e-4
    assert relative_error(outputs["approximate"], outputs["exact"]) < 0.1 * drop


# The batched tile path against the driver.


def programmed_small(profile, seed: int = 0):
    network = small_network()
    driver = SimulatorDriver(profile, rows=32, cols=32, arrays=4, seed=seed)
    mapped = map_for_driver(network, driver, (16, 8))
    write_verify(driver, mapped.targets(), progress=False)
    return network, mapped, driver


@pytest.mark.parametrize("settings", [dict(), dict(dac_bits=6, adc_bits=7), dict(dac_bits=5, adc_bits=6, pair_subtraction="digital")],
                         ids=["ideal", "8-bit-ish", "digital pair subtraction"])
def test_batched_layer_equals_driver_mvm(settings):
    network, mapped, driver = programmed_small("ideal")
    with driver:
        analog = from_driver(network, mapped, driver, AnalogConfig(**settings))
        x = torch.randn(3, 3, 8, 8)
        calibrate(analog, [x])
        layer = analog.network[0]
        with torch.no_grad():
            fast = layer(x)
            slow = forward_through_driver(layer, x, driver)
    assert torch.allclose(fast, slow, atol=1e-5 * float(slow.abs().max()))


def test_read_noise_matches_driver_statistics():
    noisy = dataclasses.replace(make_profile("ideal"), variation=dataclasses.replace(make_profile("ideal").variation, read_sigma_rel=0.05))
    network, mapped, driver = programmed_small(noisy, seed=3)
    with driver:
        analog = from_driver(network, mapped, driver, AnalogConfig(read_noise_sigma_rel=None))
        assert analog.config.read_noise_sigma_rel == 0.05
        layer = analog.network[0]
        x = torch.randn(1, 3, 8, 8).expand(200, -1, -1, -1).contiguous()
        calibrate(analog, [x])
        with torch.no_grad():
            fast_spread = layer(x).std(dim=0)
            slow_spread = forward_through_driver(layer, x, driver).std(dim=0)
    ratio = float(fast_spread.mean() / slow_spread.mean())
    assert 0.9 < ratio < 1.1
    assert float(fast_spread.mean()) > 0


def test_bit_serial_with_ideal_adc_equals_parallel_dac():
    x = torch.randn(2, 3, 8, 8)
    outputs = []
    for bit_serial in (False, True):
        analog = convert_small(AnalogConfig(dac_bits=6, bit_serial=bit_serial))
        calibrate(analog, [x])
        with torch.no_grad():
            outputs.append(analog(x))
    assert relative_error(outputs[1], outputs[0]) < 1e-5


def test_bit_serial_with_adc_stays_close():
    x = torch.randn(4, 3, 8, 8)
    analog = convert_small(AnalogConfig(dac_bits=8, adc_bits=10, bit_serial=True))
    calibrate(analog, [x])
    with torch.no_grad():
        assert relative_error(analog(x), small_network()(x)) < 0.05


def test_eight_bit_chain_stays_close_and_counts_saturation():
    x = torch.randn(8, 3, 8, 8)
    analog = convert_small(AnalogConfig(dac_bits=8, adc_bits=8, read_noise_sigma_rel=0.002))
    calibrate(analog, [x])
    with torch.no_grad():
        assert relative_error(analog(x), small_network()(x)) < 0.05
        analog(4 * x)
    saturation = analog.saturation()
    assert saturation["adc"]["conversions"] > 0
    assert saturation["dac"]["saturated"] > 0
    assert set(saturation["layers"]) == {"0", "2", "5"}


def test_adc_needs_calibration():
    analog = convert_small(AnalogConfig(adc_bits=8))
    with pytest.raises(ConfigError, match="calibrate"):
        analog(torch.randn(1, 3, 8, 8))


def test_calibration_picks_unsigned_dac_after_relu():
    analog = convert_small(AnalogConfig(dac_bits=8, adc_bits=8))
    calibrate(analog, [torch.randn(4, 3, 8, 8)])
    first, second, _ = analog.analog_layers()
    assert bool(first.input_signed)
    assert not bool(second.input_signed)
    assert first.dac().step == 2 * 0.1 / 256
    assert second.dac().step == 0.1 / 256


# Conversion.


def test_batchnorm_folded_or_kept():
    network = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    folded = convert(network, window=WINDOW, tile_rows=128, tile_cols=128, array_rows=128, array_cols=128, example_input=x)
    kept = convert(network, window=WINDOW, tile_rows=128, tile_cols=128, array_rows=128, array_cols=128, fold_batchnorm=False)
    assert len(folded.folded) == 20
    assert not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    assert sum(isinstance(module, nn.BatchNorm2d) for module in kept.modules()) == 20
    with torch.no_grad():
        assert relative_error(folded(x), network(x)) < 1e-5
        assert relative_error(kept(x), network(x)) < 1e-5


def test_keep_digital_layers_stay_torch_modules():
    network = torchvision.models.resnet18(num_classes=10).eval()
    analog = convert(network, window=WINDOW, tile_rows=128, tile_cols=128, array_rows=128, array_cols=128,
                     keep_digital=["conv1", "fc"], example_input=torch.randn(1, 3, 32, 32))
    assert isinstance(analog.network.conv1, nn.Conv2d)
    assert isinstance(analog.network.fc, nn.Linear)
    assert isinstance(analog.network.layer1[0].conv1, AnalogLayer)
    assert "fc" not in {spec.name for spec in analog.mapped.plan.layers}


def test_keep_digital_pattern_must_match():
    with pytest.raises(ConfigError, match="matches no"):
        convert(small_network(), window=WINDOW, tile_rows=16, tile_cols=16, array_rows=32, array_cols=32, keep_digital=["fc*"])


# Drift, reproducibility, save and load.


def drifting_profile():
    ideal = make_profile("ideal")
    return dataclasses.replace(ideal, variation=dataclasses.replace(ideal.variation, drift_nu_mean=0.06, drift_nu_sigma_dtod=0.005))


def test_drift_compensation_reduces_error():
    network, mapped, driver = programmed_small(drifting_profile(), seed=4)
    x = torch.randn(4, 3, 8, 8)
    errors = {}
    with driver:
        analog = from_driver(network, mapped, driver)
        with torch.no_grad():
            fresh = analog(x)
        driver.wait_s(1e4)
        for mode in ("none", "global", "column"):
            read_after_drift(analog, driver, 0.0, mode)
            with torch.no_grad():
                errors[mode] = relative_error(analog(x), fresh)
    assert errors["none"] > 0.2
    assert errors["global"] < 0.5 * errors["none"]
    assert errors["column"] < errors["global"]


def test_noisy_inference_is_reproducible_for_a_seed():
    x = torch.randn(2, 3, 8, 8)
    analog = convert_small(AnalogConfig(dac_bits=8, adc_bits=8, read_noise_sigma_rel=0.02, seed=7))
    calibrate(analog, [x])
    with torch.no_grad():
        first = analog(x)
        analog.seed(7)
        again = analog(x)
        analog.seed(8)
        other = analog(x)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("variance", ["exact", "column-mean"])
def test_save_and_load_are_exact(tmp_path, variance):
    x = torch.randn(2, 3, 32, 32)
    network = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=10).eval()
    config = AnalogConfig(dac_bits=8, adc_bits=8, read_noise_sigma_rel=0.01, read_noise_variance=variance, drift_compensation="column")
    analog = convert(network, window=WINDOW, tile_rows=64, tile_cols=64, array_rows=64, array_cols=64, example_input=x,
                     config=config,
                     keep_digital=["classifier"])
    calibrate(analog, [x])
    save_analog(analog, tmp_path / "saved")

    skeleton = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=10)
    loaded = load_analog(tmp_path / "saved", skeleton)
    assert loaded.config == analog.config
    assert loaded.mapped.plan == analog.mapped.plan
    assert loaded.folded == analog.folded
    for original, restored in zip(analog.analog_layers(), loaded.analog_layers()):
        assert torch.equal(original.positive_s, restored.positive_s)
        assert torch.equal(original.adc_range_a, restored.adc_range_a)
    analog.seed(3)
    loaded.seed(3)
    with torch.no_grad():
        assert torch.equal(loaded(x), analog(x))


def test_load_rejects_other_architecture(tmp_path):
    analog = convert_small(AnalogConfig())
    save_analog(analog, tmp_path)
    with pytest.raises(ConfigError, match="does not fit"):
        load_analog(tmp_path, nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU()))


def test_compiled_path_equals_eager():
    x = torch.randn(4, 3, 8, 8)
    outputs, saturation = {}, {}
    for compile_ in (False, True):
        analog = convert_small(AnalogConfig(dac_bits=8, adc_bits=8, compile=compile_))
        calibrate(analog, [x])
        with torch.no_grad():
            outputs[compile_] = analog(3 * x)
        saturation[compile_] = analog.saturation()
    # The codes agree exactly; the final scaling may round once differently (a fused multiply-add).
    assert torch.allclose(outputs[True], outputs[False], rtol=1e-6, atol=0)
    assert saturation[True] == saturation[False]
    assert saturation[True]["adc"]["saturated"] > 0


def test_threaded_noise_is_reproducible_and_normal():
    like = torch.empty(0)
    draws = [standard_normal((3, PARALLEL_NOISE_SIZE), torch.Generator().manual_seed(5), like) for _ in range(2)]
    other = standard_normal((3, PARALLEL_NOISE_SIZE), torch.Generator().manual_seed(6), like)
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], other)
    assert abs(float(draws[0].mean())) < 0.01
    assert abs(float(draws[0].std()) - 1) < 0.01


def test_compiled_read_noise_spread():
    x = torch.randn(1, 3, 8, 8)
    batch = x.expand(300, -1, -1, -1).contiguous()
    spread, repeats = {}, {}
    for compile_ in (False, True):
        analog = convert_small(AnalogConfig(dac_bits=8, adc_bits=14, read_noise_sigma_rel=0.05, seed=11, compile=compile_))
        calibrate(analog, [batch])
        with torch.no_grad():
            analog.seed(11)
            first = analog.network[0](batch)
            analog.seed(11)
            repeats[compile_] = torch.equal(first, analog.network[0](batch))
        spread[compile_] = float(first.std(dim=0).mean())
    assert repeats[True]
    assert repeats[False]
    assert spread[False] > 0
    assert 0.9 < spread[True] / spread[False] < 1.1


def test_first_order_ir_drop_rejects_large_drops():
    conductance = np.random.default_rng(0).uniform(WINDOW.conductance_min_s, WINDOW.conductance_max_s, (64, 128))
    with pytest.raises(ConfigError, match="use the exact model"):
        convert_small(AnalogConfig(wire_resistance_ohm=2.0))
    small = approximate_effective_conductance(conductance, 1e-5)
    assert float(small.min()) > 0
