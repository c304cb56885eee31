"""The main job through the Python API: seeded runs repeat exactly."""

from __future__ import annotations

import shutil

from cim_runtime.driver import open_driver
from cim_runtime.pipeline import InferenceRequest, run_inference
from cim_runtime.zoo import DEFAULT_MODEL_DIR, DEFAULT_SAMPLE_DIR


def run_once(data_root, seed: int) -> dict:
    request = InferenceRequest(model_dir=DEFAULT_MODEL_DIR, data_root=data_root, tile=(128, 64), progress=False)
    with open_driver(f"sim://?seed={seed}") as driver:
        summary = run_inference(driver, request).summary
    summary.pop("time_s")
    summary["programming"].pop("time_s")
    return summary


def test_seeded_runs_are_identical(tmp_path):
    for folder in ["1", "2", "3", "4", "5"]:
        shutil.copytree(DEFAULT_SAMPLE_DIR / folder, tmp_path / folder)
    first = run_once(tmp_path, seed=11)
    assert run_once(tmp_path, seed=11) == first
    assert run_once(tmp_path, seed=12)["programming"] != first["programming"]
