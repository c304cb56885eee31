"""Resumable programming: journal, simulator checkpoints, stuck cells, saved state and `cim-run program`."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cim_runtime.cli import main
from cim_runtime.device import make_profile
from cim_runtime.device.config import save_device_config
from cim_runtime.driver import SimulatorDriver, open_driver
from cim_runtime.errors import ConfigError, DataError
from cim_runtime.mapping import ConductanceWindow, array_chunks, cells_to_pairs, map_network
from cim_runtime.programming.calibration import calibrate_columns, fit_lines
from cim_runtime.programming.journal import Journal
from cim_runtime.programming.session import (
    COMPENSATING,
    REMAPPED,
    STUCK,
    STUCK_COMPENSATED,
    ProgrammingSession,
    SessionSettings,
)
from cim_runtime.programming.state import load_state
from cim_runtime.zoo import Recipe, build_network
from cim_runtime.zoo.recipes import ClassEntry
from firmware_protocol.emulator import start_emulator
from firmware_protocol.firmware import CountingSimulator

TINY_VGG = {"config": [8, "M", 16, "M", 32], "batch_norm": False, "hidden": 16}
SIM = "sim://?rows=32&cols=32&arrays=64&seed=5"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A small VGG checkpoint in the recipe format: about 13,000 cells, 16 arrays of 32x32."""
    folder = tmp_path_factory.mktemp("tiny-model")
    recipe = Recipe(name="tiny-vgg", builder="vgg", builder_kwargs=TINY_VGG, input_size_px=32, resize_px=36,
                    normalize_mean=[0.5, 0.5, 0.5], normalize_std=[0.25, 0.25, 0.25],
                    classes=[ClassEntry(f"{index}", f"class {index}") for index in range(3)])
    torch.manual_seed(0)
    torch.save(build_network(recipe).state_dict(), folder / "weights.pt")
    (folder / "recipe.json").write_text(recipe.to_json())
    return folder


def small_mapping(cols: int = 16, spare_pairs: int = 0):
    torch.manual_seed(1)
    network = torch.nn.Sequential(torch.nn.Conv2d(2, 6, 3), torch.nn.Flatten(), torch.nn.Linear(6, 4))
    probe = SimulatorDriver("C4D1", rows=16, cols=cols, arrays=1)
    window = ConductanceWindow(*probe.cells.window_s())
    return map_network(network, window, tile_rows=16, tile_cols=cols - 2 * spare_pairs, array_rows=16, array_cols=cols,
                       spare_pairs=spare_pairs)


def run_session(folder: Path, driver: SimulatorDriver, mapped, resume: bool = False, settings: SessionSettings = SessionSettings()):
    session = ProgrammingSession(driver, mapped.targets(), array_chunks(mapped.plan), folder, settings, mapped.plan)
    return session.run({"test": 1}, resume=resume, progress=False)


def test_session_programs_every_cell_and_journals_each_step(tmp_path):
    mapped = small_mapping()
    with SimulatorDriver("C4D1", rows=16, cols=16, arrays=8, seed=2) as driver:
        result = run_session(tmp_path, driver, mapped)
    assert result.in_tolerance.all()
    journal = Journal.open(tmp_path / "journal.jsonl")
    chunks = len(array_chunks(mapped.plan))
    assert len(journal.records) == 3 * chunks == result.steps
    assert [record["kind"] for record in journal.records] == ["program"] * chunks + ["retry"] * chunks + ["compensate"] * chunks
    assert sum(record["pulses"] for record in journal.records) == result.pulses.sum()


def test_interrupted_session_resumes_to_the_same_state(tmp_path):
    mapped = small_mapping()
    with SimulatorDriver("C4D1", rows=16, cols=16, arrays=8, seed=2, state=tmp_path / "whole" / "sim") as driver:
        whole = run_session(tmp_path / "whole", driver, mapped)

    class Dies(SimulatorDriver):
        def save_checkpoint(self, generation):
            super().save_checkpoint(generation)
            if generation == 4:
                raise KeyboardInterrupt  # Between the checkpoint and the journal line: the hardest moment.

    with pytest.raises(KeyboardInterrupt), Dies("C4D1", rows=16, cols=16, arrays=8, seed=2, state=tmp_path / "cut" / "sim") as driver:
        run_session(tmp_path / "cut", driver, mapped)
    assert len(Journal.open(tmp_path / "cut" / "journal.jsonl").records) == 3
    with SimulatorDriver("C4D1", rows=16, cols=16, arrays=8, seed=2, state=tmp_path / "cut" / "sim") as driver:
        resumed = run_session(tmp_path / "cut", driver, mapped, resume=True)
        assert np.array_equal(resumed.measured_s, whole.measured_s)
        assert np.array_equal(resumed.pulses, whole.pulses)


def test_session_resumes_on_board_after_host_dies(tmp_path, monkeypatch):
    mapped = small_mapping()
    board = CountingSimulator("C4D1", rows=16, cols=16, arrays=8, seed=2)
    server = start_emulator(board)
    appended = Journal.append

    def host_dies_at_fourth_step(journal, record):
        if record["step"] == 3:
            raise KeyboardInterrupt
        appended(journal, record)

    try:
        with monkeypatch.context() as patch:
            patch.setattr(Journal, "append", host_dies_at_fourth_step)
            with pytest.raises(KeyboardInterrupt), open_driver(server.url) as driver:
                run_session(tmp_path, driver, mapped)
        pulses_before_resume = board.pulses_applied
        with open_driver(server.url) as driver:
            result = run_session(tmp_path, driver, mapped, resume=True)
    finally:
        server.stop()
    assert result.in_tolerance.all()
    records = Journal.open(tmp_path / "journal.jsonl").records
    assert len(records) == result.steps
    # Only the steps from the one cut short on pulse the board again, each with exactly the pulses its record counts.
    assert board.pulses_applied - pulses_before_resume == sum(record["pulses"] for record in records[3:])


def test_resume_rejects_changed_settings(tmp_path):
    mapped = small_mapping()
    with SimulatorDriver("C4D1", rows=16, cols=16, arrays=8, seed=2, state=tmp_path / "sim") as driver:
        run_session(tmp_path, driver, mapped)
    with SimulatorDriver("C4D1", rows=16, cols=16, arrays=8, seed=2) as driver, pytest.raises(ConfigError, match="pass --resume"):
        run_session(tmp_path, driver, mapped)
    with SimulatorDriver("C4D1", rows=16, cols=16, arrays=8, seed=3) as driver, pytest.raises(ConfigError, match=r"the backend \(--backend, --device-profile or --seed\) differs"):
        run_session(tmp_path, driver, mapped, resume=True)
    with SimulatorDriver("C4D1", rows=16, cols=16, arrays=8, seed=2) as driver, pytest.raises(ConfigError, match="--retry-passes was 1 and is 2 now"):
        run_session(tmp_path, driver, mapped, resume=True, settings=SessionSettings(retry_passes=2))


def test_journal_drops_torn_last_line(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal.create(path, {"run": 1})
    journal.append({"step": 0})
    with open(path, "a") as handle:
        handle.write('{"step": 1, "ki')
    assert Journal.open(path).records == [{"step": 0}]
    assert path.read_text().endswith('{"step": 0}\n')
    path.write_text(path.read_text().replace('{"step": 0}', "garbage") + '{"step": 1}\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        Journal.open(path)
    with pytest.raises(ConfigError, match="no run to resume"):
        Journal.open(tmp_path / "missing.jsonl")


def test_stuck_cells_are_compensated_by_their_pair(tmp_path):
    nominal = make_profile("C4D1")
    profile = replace(nominal, variation=replace(nominal.variation, stuck_min_fraction=0.03))
    mapped = small_mapping()
    with SimulatorDriver(profile, rows=16, cols=16, arrays=8, seed=4) as driver:
        result = run_session(tmp_path, driver, mapped)
        stuck = driver.cells.stuck
    compensated = np.flatnonzero(result.status == STUCK_COMPENSATED)
    assert compensated.size > 0
    # The pair's difference, not each cell, carries the weight: it is within two bands of its target.
    pair_error = (result.measured_s[compensated] - result.measured_s[compensated ^ 1]) - (
        result.targets.target_s[compensated] - result.targets.target_s[compensated ^ 1])
    assert np.all(np.abs(pair_error) <= 2 * result.tolerance_s)
    assert np.all(result.target_s[compensated ^ 1] != result.targets.target_s[compensated ^ 1])
    assert result.summary()["cells_by_status"]["stuck-compensated"] == compensated.size
    assert stuck is not None and (result.status == STUCK).sum() + compensated.size <= np.count_nonzero(stuck) + 2


def test_columns_with_stuck_cells_move_to_spare_pairs(tmp_path):
    nominal = make_profile("C4D1")
    profile = replace(nominal, variation=replace(nominal.variation, stuck_max_fraction=0.02))
    mapped = small_mapping(cols=32, spare_pairs=4)
    with SimulatorDriver(profile, rows=16, cols=32, arrays=8, seed=4) as driver:
        result = run_session(tmp_path, driver, mapped)
    remapped = result.status == REMAPPED
    in_spares = result.targets.col >= mapped.plan.spare_col_start
    assert remapped.any()
    assert np.all(in_spares[remapped])
    # A spare pair can hold stuck cells too; the moved column's pairs then compensate them.
    assert np.all(np.isin(result.status[in_spares], (REMAPPED, STUCK, STUCK_COMPENSATED, COMPENSATING)))
    assert np.all(result.in_tolerance[remapped])
    assert np.array_equal(result.target_s[remapped], mapped.targets().target_s[remapped])
    addresses = set(zip(result.targets.array.tolist(), result.targets.row.tolist(), result.targets.col.tolist()))
    assert len(addresses) == len(result.targets)
    assert Journal.open(tmp_path / "journal.jsonl").records[-1]["kind"] == "remap"


def test_calibration_of_ideal_devices_is_a_unit_line():
    mapped = small_mapping()
    with SimulatorDriver("ideal", rows=16, cols=16, arrays=8) as driver:
        targets = mapped.targets()
        driver_cells = driver.cells
        driver_cells.conductance_s[np.ravel_multi_index((targets.array, targets.row, targets.col), (8, 16, 16))] = targets.target_s
        calibration = calibrate_columns(driver, mapped.plan, targets, vectors=8)
    assert np.allclose(calibration["gain"], 1.0, atol=1e-9)
    assert np.allclose(calibration["offset_a"], 0.0, atol=1e-15)
    expected = np.arange(12.0).reshape(4, 3)
    gain, offset = fit_lines(expected, 2.5 * expected + 0.1)
    assert np.allclose(gain, 2.5)
    assert np.allclose(offset, 0.1)


def test_cells_to_pairs_inverts_cell_targets():
    mapped = small_mapping(cols=8)
    pairs = cells_to_pairs(mapped.plan, mapped.targets().target_s)
    for name, (positive, negative) in mapped.target_pairs.items():
        assert np.array_equal(pairs[name][0], positive)
        assert np.array_equal(pairs[name][1], negative)


def test_program_then_infer_from_the_saved_state(tmp_path, capsys):
    output = tmp_path / "programmed"
    assert main(["program", "--output", str(output), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "100.000 % in tolerance" in printed
    summary = json.loads((output / "summary.json").read_text())
    assert summary["programming"]["failed_cells"] == 0
    assert (output / "programming.png").stat().st_size > 10_000
    assert (output / "layers.csv").read_text().count("\n") == summary["mapping"]["layers"] + 1
    state = load_state(output)
    assert state.cells["measured_s"].size == summary["mapping"]["cells"]

    assert main(["infer", "--programmed", str(output), "--output", str(tmp_path / "inferred"), "--no-progress"]) == 0
    inferred = json.loads((tmp_path / "inferred" / "summary.json").read_text())
    assert inferred["weight_relative_error"] == pytest.approx(summary["weight_relative_error"])
    assert abs(inferred["accuracy_difference_points"]) < 3


def test_infer_programmed_rejects_programming_options_and_missing_state(tmp_path, capsys):
    assert main(["infer", "--programmed", str(tmp_path), "--tolerance", "0.02"]) == 2
    assert "--tolerance only affects programming" in capsys.readouterr().err
    assert main(["infer", "--programmed", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "programmed.json is missing" in capsys.readouterr().err


def _final_state(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / "programmed.npz") as data:
        arrays = {name: data[name] for name in data.files}
    checkpoints = sorted((folder / "simulator").glob("checkpoint-g*.json"))
    generation = int(checkpoints[-1].stem.split("-g")[1])
    with SimulatorDriver("C4D1", rows=32, cols=32, arrays=64, seed=5, state=folder / "simulator") as driver:
        driver.restore_checkpoint(generation)
        arrays["true_conductance_s"] = np.stack([driver.true_conductance_s(array) for array in range(16)])
    return arrays


def test_killed_runs_resume_to_same_state(tmp_path, tiny_model):
    command = [sys.executable, "-m", "cim_runtime.cli", "program", "--model", str(tiny_model), "--backend", SIM, "--tile", "32x32",
               "--no-progress", "--output"]
    started = time.monotonic()
    subprocess.run(command + [str(tmp_path / "whole")], check=True, capture_output=True)
    duration_s = time.monotonic() - started

    seed = random.randrange(2**32)
    chooser = random.Random(seed)
    output = tmp_path / "killed"
    kills_mid_run = 0
    for attempt in range(24):
        resume = ["--resume"] if (output / "journal.jsonl").exists() else []
        process = subprocess.Popen(command + [str(output)] + resume, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(chooser.uniform(0.2, 1.0) * duration_s)
        if process.poll() is not None:
            if kills_mid_run:
                break
            # On a loaded machine a run can finish before any kill lands in the middle; start over.
            shutil.rmtree(output, ignore_errors=True)
            continue
        process.send_signal(signal.SIGKILL)
        process.wait()
        journal = output / "journal.jsonl"
        kills_mid_run += journal.exists() and 0 < len(Journal.open(journal).records)
        if kills_mid_run >= 3:
            break
    finished = subprocess.run(command + [str(output)] + (["--resume"] if (output / "journal.jsonl").exists() else []),
                              capture_output=True, text=True)
    assert finished.returncode == 0, f"random seed {seed}: {finished.stderr}"
    assert kills_mid_run >= 1, f"random seed {seed}: no kill landed while programming"
    whole, resumed = _final_state(tmp_path / "whole"), _final_state(output)
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert np.array_equal(whole[name], resumed[name]), f"random seed {seed}: {name} differs after resuming"
    assert os.path.getsize(output / "programmed.npz") > 0


def test_damaged_step_and_state_files_give_clear_errors(tmp_path, tiny_model, capsys):
    output = tmp_path / "run"
    assert main(["program", "--model", str(tiny_model), "--backend", SIM, "--tile", "32x32", "--no-progress", "--output", str(output)]) == 0
    step = output / "steps" / "step-00003.npz"
    step.write_bytes(step.read_bytes()[:500])
    assert main(["program", "--model", str(tiny_model), "--backend", SIM, "--tile", "32x32", "--no-progress", "--output", str(output),
                 "--resume"]) == 2
    assert "step-00003.npz cannot be used" in capsys.readouterr().err

    state = output / "programmed.json"
    meta = json.loads(state.read_text())
    meta["scales"][next(iter(meta["scales"]))] = "abc"
    state.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="corrupt"):
        load_state(output)
    meta["scales"] = json.loads((output / "summary.json").read_text())["scales"]
    state.write_text(json.dumps(meta))
    (output / "programmed.npz").write_bytes((output / "programmed.npz").read_bytes()[:1000])
    with pytest.raises(DataError, match="corrupt"):
        load_state(output)


def test_resume_names_changed_option(tmp_path, tiny_model, capsys):
    base = ["program", "--model", str(tiny_model), "--tile", "32x32", "--no-progress", "--output", str(tmp_path / "run")]
    assert main(base + ["--backend", SIM]) == 0
    assert main(base + ["--backend", SIM, "--resume", "--scheme", "adaptive"]) == 2
    assert "--scheme was 'amplitude-ramp' and is 'adaptive' now" in capsys.readouterr().err
    nominal = make_profile("C4D1")
    stuck = replace(nominal, variation=replace(nominal.variation, stuck_min_fraction=0.01))
    save_device_config(stuck, tmp_path / "same-name.toml")
    assert main(base + ["--backend", SIM, "--resume", "--device-profile", str(tmp_path / "same-name.toml")]) == 2
    assert "the device model (--device-profile) differs" in capsys.readouterr().err


def test_runs_do_not_overwrite_each_others_results(tmp_path, tiny_model, capsys):
    folder = tmp_path / "earlier"
    folder.mkdir()
    (folder / "summary.json").write_text("{}")
    assert main(["program", "--model", str(tiny_model), "--backend", SIM, "--tile", "32x32", "--output", str(folder)]) == 2
    assert "already contains results of another run (summary.json)" in capsys.readouterr().err
    programmed = tmp_path / "programmed"
    assert main(["program", "--model", str(tiny_model), "--backend", SIM, "--tile", "32x32", "--no-progress", "--output", str(programmed)]) == 0
    capsys.readouterr()
    assert main(["infer", "--programmed", str(programmed), "--output", str(programmed)]) == 2
    assert "contains a cim-run program run" in capsys.readouterr().err


def test_resumed_run_counts_the_time_of_every_step(tmp_path):
    mapped = small_mapping()
    with SimulatorDriver("C4D1", rows=16, cols=16, arrays=8, seed=2, state=tmp_path / "sim") as driver:
        result = run_session(tmp_path, driver, mapped)
    records = Journal.open(tmp_path / "journal.jsonl").records
    assert result.elapsed_s == pytest.approx(sum(record["time_s"] for record in records))
    with SimulatorDriver("C4D1", rows=16, cols=16, arrays=8, seed=2, state=tmp_path / "sim") as driver:
        again = run_session(tmp_path, driver, mapped, resume=True)
    assert again.elapsed_s == pytest.approx(result.elapsed_s)


def test_non_finite_state_values_are_rejected(tmp_path, tiny_model):
    output = tmp_path / "run"
    assert main(["program", "--model", str(tiny_model), "--backend", SIM, "--tile", "32x32", "--no-progress", "--output", str(output)]) == 0
    arrays = dict(np.load(output / "programmed.npz"))
    arrays["cell_measured_s"][:3] = np.nan
    np.savez(output / "programmed.npz", **arrays)
    with pytest.raises(DataError, match="measured_s in programmed.npz contains values that are not finite"):
        load_state(output)
