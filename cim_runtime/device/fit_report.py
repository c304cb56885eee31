"""Write a device fit: the device TOML, a JSON report and a PNG of measured against fitted curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cim_runtime.device.config import save_device_config
from cim_runtime.device.fitting import DeviceFit, mean_ramp
from cim_runtime.device.readers import PulseTrainData
from cim_runtime.files import write_json
from cim_runtime.report import save_figure


def plot_fit(path: Path, data: PulseTrainData, fit: DeviceFit) -> None:
    """Plot every measured ramp faintly, the mean ramp, and the fitted model, per direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, label, ramps, model, error in (
        (axes[0], "potentiation", data.up, fit.fitted_up, fit.nrmse["up"]),
        (axes[1], "depression", data.down, fit.fitted_down, fit.nrmse["down"]),
    ):
        for ramp in ramps[:200]:
            axis.plot(ramp, color="gray", alpha=0.15, linewidth=0.7)
        mean = mean_ramp(ramps)
        axis.plot(mean, ".", color="tab:blue", markersize=3, label="measured mean")
        axis.plot(np.arange(model.size), model, color="tab:red", linewidth=1.5, label=f"{fit.model} fit, NRMSE {100 * error:.2f} %")
        axis.set_xlabel("pulse")
        axis.set_ylabel("conductance (S)")
        axis.set_title(label)
        axis.legend()
    figure.suptitle(fit.name)
    figure.tight_layout()
    save_figure(figure, path)


def write_fit(folder: Path, data: PulseTrainData, fit: DeviceFit, simulated: dict | None = None) -> None:
    """Write ``device.toml``, ``fit.json`` and ``fit.png`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_device_config(fit.config, folder / "device.toml")
    report = {**fit.summary(), "ramps": {"up": len(data.up), "down": len(data.down)}}
    if simulated is not None:
        report["simulated_check"] = simulated
    write_json(folder / "fit.json", report)
    plot_fit(folder / "fit.png", data, fit)
