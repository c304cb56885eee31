"""Write characterization results as CSV, JSON and PNG files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from cim_runtime.characterize.stability import EnduranceResult, ReadNoiseResult, RetentionResult
from cim_runtime.characterize.trains import PulseTrainResult, RampResult
from cim_runtime.files import write_json
from cim_runtime.report import save_figure

#: Header of the pulse-train CSV; ``cim-run fit`` recognizes files by it.
PULSE_TRAIN_HEADER = ("cycle", "direction", "pulse", "cell", "conductance_s")


def write_csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _figure(columns: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, columns, figsize=(5.5 * columns, 4.2), squeeze=False)


def write_pulse_train(folder: Path, result: PulseTrainResult) -> dict:
    write_csv(folder / "pulse_train.csv", PULSE_TRAIN_HEADER, result.rows())
    figure, axes = _figure()
    axis = axes[0, 0]
    cycles, _, pulses, _ = result.conductance_s.shape
    for cycle in range(cycles):
        trace = np.concatenate([result.conductance_s[cycle, 0], result.conductance_s[cycle, 1, 1:]]) * 1e6
        axis.plot(np.arange(trace.shape[0]), trace, color="tab:blue", alpha=0.15, linewidth=0.8)
        axis.plot(np.arange(trace.shape[0]), trace.mean(axis=1), color="tab:red", linewidth=1.2,
                  label="mean over cells" if cycle == 0 else None)
    axis.axvline(pulses - 1, color="black", linewidth=0.8, linestyle=":")
    axis.set_xlabel("pulse (potentiation, then depression)")
    axis.set_ylabel("conductance (µS)")
    axis.set_title(f"pulse trains, {result.settings.scheme} scheme, {cycles} cycles")
    axis.legend()
    save_figure(figure, folder / "pulse_train.png")
    return {"file": "pulse_train.csv", "scheme": result.settings.scheme, "pulses": result.settings.pulses, "cycles": cycles}


def write_ramp(folder: Path, result: RampResult) -> dict:
    rows = []
    for polarity, trace in (("set", result.set_conductance_s), ("reset", result.reset_conductance_s)):
        sign = 1 if polarity == "set" else -1
        for step, amplitude in enumerate(result.amplitudes_v):
            rows += [(polarity, sign * float(amplitude), cell, float(value)) for cell, value in enumerate(trace[step])]
    write_csv(folder / "rps.csv", ("polarity", "amplitude_v", "cell", "conductance_s"), rows)
    figure, axes = _figure()
    axis = axes[0, 0]
    axis.plot(result.amplitudes_v, result.set_conductance_s.mean(axis=1) * 1e6, marker=".", label="positive ramp (set)")
    axis.plot(-result.amplitudes_v, result.reset_conductance_s.mean(axis=1) * 1e6, marker=".", label="negative ramp (reset)")
    for threshold, sign in ((result.set_threshold_v, 1), (result.reset_threshold_v, -1)):
        if np.isfinite(threshold):
            axis.axvline(sign * threshold, color="gray", linestyle="--", linewidth=0.8)
    axis.set_xlabel("pulse amplitude (V)")
    axis.set_ylabel("mean conductance after the pulse (µS)")
    axis.set_title("ramp pulse series")
    axis.legend()
    save_figure(figure, folder / "rps.png")
    return {"file": "rps.csv", "set_threshold_v": result.set_threshold_v, "reset_threshold_v": result.reset_threshold_v}


def write_retention(folder: Path, result: RetentionResult) -> dict:
    rows = [(float(t), cell, float(v)) for t, reads in zip(result.times_s, result.conductance_s) for cell, v in enumerate(reads)]
    write_csv(folder / "retention.csv", ("time_s", "cell", "conductance_s"), rows)
    figure, axes = _figure()
    axis = axes[0, 0]
    axis.semilogx(np.maximum(result.times_s, 1e-3), result.conductance_s * 1e6, color="tab:blue", alpha=0.2, linewidth=0.8)
    axis.semilogx(np.maximum(result.times_s, 1e-3), result.conductance_s.mean(axis=1) * 1e6, color="tab:red", marker="o")
    axis.set_xlabel("time after programming (s)")
    axis.set_ylabel("conductance (µS)")
    axis.set_title("retention")
    save_figure(figure, folder / "retention.png")
    change = result.relative_change()
    return {"file": "retention.csv", "relative_change_at_last_read": float(change[-1]), "last_time_s": float(result.times_s[-1])}


def write_endurance(folder: Path, result: EnduranceResult) -> dict:
    rows = [(int(c), cell, float(h), float(lo)) for c, highs, lows in zip(result.cycles, result.high_s, result.low_s)
            for cell, (h, lo) in enumerate(zip(highs, lows))]
    write_csv(folder / "endurance.csv", ("cycle", "cell", "high_s", "low_s"), rows)
    figure, axes = _figure()
    axis = axes[0, 0]
    axis.semilogx(result.cycles, result.high_s.mean(axis=1) * 1e6, marker=".", label="after set")
    axis.semilogx(result.cycles, result.low_s.mean(axis=1) * 1e6, marker=".", label="after reset")
    axis.set_xlabel("switching cycle")
    axis.set_ylabel("mean conductance (µS)")
    axis.set_title("endurance")
    axis.legend()
    save_figure(figure, folder / "endurance.png")
    ratio = result.window_ratio()
    return {"file": "endurance.csv", "cycles": int(result.cycles[-1]), "ratio_first": float(ratio[0]), "ratio_last": float(ratio[-1])}


def write_read_noise(folder: Path, result: ReadNoiseResult) -> dict:
    levels, reads, cells = result.conductance_s.shape
    rows = [(level, read, cell, float(result.conductance_s[level, read, cell]))
            for level in range(levels) for read in range(reads) for cell in range(cells)]
    write_csv(folder / "read_noise.csv", ("level", "read", "cell", "conductance_s"), rows)
    deviation = (result.conductance_s / result.conductance_s.mean(axis=1, keepdims=True) - 1.0).ravel()
    figure, axes = _figure()
    axis = axes[0, 0]
    axis.hist(deviation * 100, bins=60, color="tab:blue")
    axis.set_xlabel("read deviation from the cell's mean (%)")
    axis.set_ylabel("reads")
    axis.set_title(f"read noise: relative sigma {100 * result.relative_sigma():.3f} %")
    save_figure(figure, folder / "read_noise.png")
    return {"file": "read_noise.csv", "relative_sigma": result.relative_sigma(), "reads": reads, "levels": levels}


def write_summary(folder: Path, summary: dict) -> None:
    write_json(folder / "characterization.json", summary)
