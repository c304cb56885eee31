"""The analog path on CUDA: ideal mode against torch, noisy runs, the compiled loops and the noise generator.

Every test here is skipped on machines without a CUDA device. On one with a GPU, run
``.venv/bin/python -m pytest tests/test_analog_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from cim_runtime.analog import AnalogConfig, calibrate, convert
from cim_runtime.analog.counter_noise import counter_normal
from cim_runtime.mapping import ConductanceWindow

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

WINDOW = ConductanceWindow(1.43e-3, 3.38e-3)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm())


def resnet_pair(config: AnalogConfig, x: torch.Tensor):
    """Return a small ResNet-18 and its analog conversion, both on the GPU."""
    torch.manual_seed(0)
    network = torchvision.models.resnet18(num_classes=10).eval()
    analog = convert(network, window=WINDOW, tile_rows=64, tile_cols=64, array_rows=64, array_cols=64,
                     example_input=x, config=config)
    return network.cuda(), analog.to("cuda")


@pytest.fixture
def no_tf32():
    """Turn TensorFloat-32 off for the test: it rounds convolution inputs to 10-bit mantissas."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_ideal_mode_equals_torch_on_cuda(no_tf32):
    x = torch.randn(2, 3, 32, 32)
    network, analog = resnet_pair(AnalogConfig(), x)
    with torch.no_grad():
        assert relative_error(analog(x.cuda()), network(x.cuda())) < 1e-5


@pytest.mark.parametrize("compile_", [False, True])
@pytest.mark.parametrize("variance", ["exact", "column-mean"])
def test_noisy_run_is_reproducible_on_cuda(compile_, variance):
    x = torch.randn(4, 3, 32, 32)
    config = AnalogConfig(dac_bits=8, adc_bits=8, read_noise_sigma_rel=0.01, read_noise_variance=variance,
                          compile=compile_, seed=5)
    network, analog = resnet_pair(config, x)
    calibrate(analog, [x.cuda()])
    with torch.no_grad():
        reference = network(x.cuda())
        analog.seed(5)
        first = analog(x.cuda())
        analog.seed(5)
        again = analog(x.cuda())
    assert first.is_cuda
    assert torch.equal(first, again)
    # 8-bit converters and 1 % read noise keep the logits close to the digital ones.
    assert relative_error(first, reference) < 0.2


def test_counter_noise_matches_cpu():
    key = torch.tensor([11, -12], dtype=torch.int32)
    like = torch.empty(300, 700)
    on_cpu = counter_normal(like, key)
    on_gpu = counter_normal(like.cuda(), key.cuda()).cpu()
    compiled = torch.compile(counter_normal, dynamic=True)(like.cuda(), key.cuda()).cpu()
    assert torch.allclose(on_gpu, on_cpu, rtol=1e-5, atol=1e-5)
    assert torch.allclose(compiled, on_cpu, rtol=1e-5, atol=1e-5)
