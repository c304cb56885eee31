"""Benchmark: images per second of plain torch, readback mode and analog mode on ResNet-18 and ResNet-50.

Run: ``.venv/bin/python benchmarks/analog_inference.py [--batches 3] [--sizes 8 16]``.

The networks are torchvision's ResNet-18 and ResNet-50 with 102 classes and random weights, mapped
onto 256 x 256 arrays of the C4D1 window with the mapping targets as conductances (perfect
programming). Readback mode is the torch network with the weights decoded from those conductances.
Analog mode folds batch norm and uses an 8-bit DAC, an 8-bit ADC and read noise of 0.2 % per cell,
calibrated on one random batch. ``analog-compiled`` is the same with ``compile=True``: DAC and
channel gather, then read noise, ADC and tile sum, each run as one fused loop.
``analog-column-mean`` is ``analog-compiled`` with ``read_noise_variance="column-mean"``. Every mode
runs the same random 224 x 224 batches, alternating batch by batch in this process, so the ratios
compare like with like. Peak memory is the maximum resident set size of a fresh child process that
builds one mode and runs one batch. ``--stages MODE`` prints instead how long one batch of 8 spends
in each stage of the analog convolutions. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time

import torch
import torchvision

from cim_runtime.analog import AnalogConfig, AnalogLayer, calibrate, convert
from cim_runtime.analog.fused import compiled, quantize_inputs
from cim_runtime.analog.layer import SetCurrents
from cim_runtime.inference import with_weights
from cim_runtime.mapping import ConductanceWindow, map_network

WINDOW = ConductanceWindow(1.43e-3, 3.38e-3)
ARRAY = 256
ANALOG = AnalogConfig(dac_bits=8, adc_bits=8, read_noise_sigma_rel=0.002)
MODES = ("torch", "readback", "analog", "analog-compiled", "analog-column-mean")
#: Settings that each analog mode changes from ANALOG.
ANALOG_MODES = {"analog": {}, "analog-compiled": {"compile": True},
                "analog-column-mean": {"compile": True, "read_noise_variance": "column-mean"}}
BUILDERS = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}


def build(name: str, mode: str) -> torch.nn.Module:
    """Return the network of one mode, ready to run."""
    torch.manual_seed(0)
    network = BUILDERS[name](num_classes=102).eval()
    if mode == "torch":
        return network
    if mode == "readback":
        mapped = map_network(network, WINDOW, tile_rows=ARRAY, tile_cols=ARRAY, array_rows=ARRAY, array_cols=ARRAY)
        return with_weights(network, mapped.decode_weights(mapped.target_pairs))
    config = AnalogConfig.from_dict({**ANALOG.to_dict(), **ANALOG_MODES[mode]})
    analog = convert(network, window=WINDOW, tile_rows=ARRAY, tile_cols=ARRAY, array_rows=ARRAY, array_cols=ARRAY,
                     config=config, example_input=torch.randn(2, 3, 224, 224))
    calibrate(analog, [torch.randn(8, 3, 224, 224)])
    return analog


def images_per_second(networks: dict[str, torch.nn.Module], batches: list[torch.Tensor]) -> dict[str, dict[str, float]]:
    """Time every network on every batch, alternating networks batch by batch.

    Alternating spreads the load of other processes over all modes alike. Returns, per mode, the
    images per second of the fastest batch (the least disturbed one) and of the median batch.
    """
    seconds = {mode: [] for mode in networks}
    with torch.no_grad():
        for network in networks.values():
            network(batches[0])
        for batch in batches:
            for mode, network in networks.items():
                started = time.perf_counter()
                network(batch)
                if batch.is_cuda:
                    torch.cuda.synchronize()
                seconds[mode].append(time.perf_counter() - started)
    size = batches[0].shape[0]
    return {mode: {"best": size / min(times), "median": size / statistics.median(times)} for mode, times in seconds.items()}


def peak_resident_gib() -> float:
    """Return this process's peak resident set size (``VmHWM``), in GiB.

    ``getrusage`` is no use here: Linux keeps ``ru_maxrss`` across ``execve``, so a spawned child
    would report the parent's peak. ``VmHWM`` belongs to the new address space only.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    raise RuntimeError("VmHWM not found in /proc/self/status; peak memory needs Linux")


def peak_memory_child(name: str, mode: str, batch_size: int, queue) -> None:
    network = build(name, mode)
    with torch.no_grad():
        network(torch.randn(batch_size, 3, 224, 224))
    queue.put(peak_resident_gib())


def peak_memory_gib(name: str, mode: str, batch_size: int) -> float:
    """Peak resident memory of a fresh process that builds one mode and runs one batch, in GiB."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=peak_memory_child, args=(name, mode, batch_size, queue))
    child.start()
    value = queue.get()
    child.join()
    return value


def layer_inputs(network: torch.nn.Module, batch: torch.Tensor) -> list[tuple[AnalogLayer, torch.Tensor]]:
    """Run ``batch`` through ``network`` once and return each analog convolution with its input."""
    recorded = []
    hooks = [layer.register_forward_pre_hook(lambda module, args: recorded.append((module, args[0].clone())))
             for layer in network.analog_layers() if layer.spec.kind == "conv2d"]
    with torch.no_grad():
        network(batch)
    for hook in hooks:
        hook.remove()
    return recorded


def stage_seconds(mode: str, repeats: int = 3) -> dict[str, float]:
    """Return the seconds one ResNet-18 batch of 8 spends in each stage of the analog convolutions.

    Stages: DAC codes and channel gather, signal convolution, noise-variance convolution, and read
    noise with ADC, tile sum and scaling to layer units. Linear layers are left out.
    """
    network = build("resnet18", mode)
    batch = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(8))
    totals = dict.fromkeys(("dac", "signal", "variance", "adc"), 0.0)
    with torch.no_grad():
        # One untimed pass compiles the fused loops for the shapes and strides met stage by stage.
        for layer, inputs in layer_inputs(network, batch):
            timed_layer_stages(layer, inputs)
        for _ in range(repeats):
            for layer, inputs in layer_inputs(network, batch):
                for stage, seconds in timed_layer_stages(layer, inputs).items():
                    totals[stage] += seconds / repeats
    return totals


def timed_layer_stages(layer: AnalogLayer, inputs: torch.Tensor) -> dict[str, float]:
    """Run one analog convolution stage by stage and return the seconds of each stage."""
    marks = [time.perf_counter()]
    dac = layer.dac()
    scale, code_min, code_max = torch.tensor([layer.config.read_voltage_v / float(layer.input_range) / dac.step, dac.code_min, dac.code_max])
    quantize = compiled(quantize_inputs) if layer.config.compile else quantize_inputs
    codes, squared, _ = quantize(inputs, scale, code_min, code_max, layer._square_dtype, layer._stored("channels"))
    marks.append(time.perf_counter())
    currents = [layer.signal_currents(index, layer._pad(values)) for index, values in enumerate(codes)]
    marks.append(time.perf_counter())
    variances = [layer.noise_variance(index, layer._pad(values)) for index, values in enumerate(squared)]
    marks.append(time.perf_counter())
    gain = layer._unit_gain(layer._units()[1])
    layer._digitize([SetCurrents(signal, *variance) for signal, variance in zip(currents, variances)], plane=False, gain=gain)
    marks.append(time.perf_counter())
    return {stage: marks[index + 1] - marks[index] for index, stage in enumerate(("dac", "signal", "variance", "adc"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3, help="timed batches per mode and batch size (default 3)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16], help="ResNet-18 batch sizes (default 8 16)")
    parser.add_argument("--resnet50-batch", type=int, default=32, help="ResNet-50 batch size for the memory run (default 32)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--no-timing", action="store_true", help="skip the images-per-second runs")
    parser.add_argument("--stages", choices=tuple(ANALOG_MODES),
                        help="only print the seconds one batch of 8 spends in each stage of the analog convolutions")
    args = parser.parse_args()
    if args.stages:
        print(json.dumps({"network": "resnet18", "batch_size": 8, "mode": args.stages, "threads": torch.get_num_threads(),
                          "stage_seconds": stage_seconds(args.stages)}))
        return

    # NOTE: the CUDA branch has not been run; the published figures come from a CPU-only machine.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    networks = {} if args.no_timing else {mode: build("resnet18", mode).to(device) for mode in MODES}
    for batch_size in args.sizes if networks else []:
        generator = torch.Generator().manual_seed(batch_size)
        batches = [torch.randn(batch_size, 3, 224, 224, generator=generator).to(device) for _ in range(args.batches)]
        rates = images_per_second(networks, batches)
        print(json.dumps({
            "network": "resnet18", "batch_size": batch_size, "batches": args.batches, "device": device, "threads": torch.get_num_threads(),
            "images_per_second": rates,
            "ratio_to_torch": {mode: {kind: rate[kind] / rates["torch"][kind] for kind in rate} for mode, rate in rates.items()},
        }), flush=True)
    if args.no_memory:
        return
    for name, batch_size in [("resnet18", max(args.sizes)), ("resnet50", args.resnet50_batch)]:
        for mode in MODES:
            print(json.dumps({"network": name, "batch_size": batch_size, "mode": mode,
                              "peak_memory_gib": peak_memory_gib(name, mode, batch_size)}), flush=True)


if __name__ == "__main__":
    main()
