"""The training loop: logs, checkpoints and resume, divergence guards, DDP on two CPU processes, and the CLI."""

from __future__ import annotations

import csv
import re
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from cim_runtime.cli import main
from cim_runtime.errors import ConfigError, DataError
from cim_runtime.training.datasets import TrainingData
from cim_runtime.training.loop import RunSpec, TrainingRun, TrainSettings, init_distributed
from cim_runtime.training.sweep import profile_metrics

NONLINEAR_DEVICE = """
name = "nonlinear-10"
[response]
kind = "exponential"
conductance_min_s = 1e-6
conductance_max_s = 1e-4
nonlinearity_up = 10.0
nonlinearity_down = -10.0
pulses_up = 32
pulses_down = 48
[variation]
step_sigma_ctoc = 0.3
write_noise_sigma_rel = 0.01
"""


def tiny_data(train: int = 48, valid: int = 16, classes: int = 4, side_px: int = 18) -> TrainingData:
    generator = torch.Generator().manual_seed(0)
    return TrainingData(
        train_images=torch.randint(0, 256, (train, 3, side_px, side_px), generator=generator, dtype=torch.uint8),
        train_labels=torch.randint(0, classes, (train,), generator=generator),
        valid_images=torch.randint(0, 256, (valid, 3, side_px, side_px), generator=generator, dtype=torch.uint8),
        valid_labels=torch.randint(0, classes, (valid,), generator=generator),
        classes=[f"class{k}" for k in range(classes)], description="random pixels",
    )


def tiny_settings(**changes) -> TrainSettings:
    values = dict(model="vgg-small", epochs=2, batch_size=16, image_size_px=16, progress=False)
    values.update(changes)
    return TrainSettings(**values)


def test_run_writes_log_and_checkpoint(tmp_path):
    run = TrainingRun(RunSpec("pulse", "C4D1", "identical"), tiny_settings(), tiny_data(), tmp_path)

    history = run.run()

    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert float(rows[-1]["pulses_per_weight_update"]) > 0
    assert (tmp_path / "checkpoint.pt").is_file()
    assert history[-1]["skipped_steps"] == 0


def final_state(run: TrainingRun) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in run.network.state_dict().items()}


@pytest.mark.parametrize("spec", [RunSpec("pulse", "Non_spikes_2", "non-identical"), RunSpec("noise-aware", "C1D8")],
                         ids=["pulse", "noise-aware"])
def test_resume_equals_uninterrupted_run(tmp_path, spec, monkeypatch):
    straight = TrainingRun(spec, tiny_settings(), tiny_data(), tmp_path / "straight")
    straight.run()
    interrupted = TrainingRun(spec, tiny_settings(), tiny_data(), tmp_path / "split")
    train_epoch = interrupted.train_epoch

    def stop_in_second_epoch(epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return train_epoch(epoch)

    monkeypatch.setattr(interrupted, "train_epoch", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()

    resumed = TrainingRun(spec, tiny_settings(), tiny_data(), tmp_path / "split")
    resumed.run(resume=True)

    assert [row["valid_top1"] for row in resumed.history] == [row["valid_top1"] for row in straight.history]
    assert [row["train_loss"] for row in resumed.history] == [row["train_loss"] for row in straight.history]
    for name, value in final_state(straight).items():
        torch.testing.assert_close(final_state(resumed)[name], value, msg=name)


def test_existing_checkpoint_needs_resume(tmp_path):
    TrainingRun(RunSpec("digital"), tiny_settings(epochs=1), tiny_data(), tmp_path).run()

    with pytest.raises(ConfigError, match="pass --resume"):
        TrainingRun(RunSpec("digital"), tiny_settings(epochs=1), tiny_data(), tmp_path).run()


def test_resume_rejects_other_run(tmp_path):
    TrainingRun(RunSpec("pulse", "C4D1"), tiny_settings(epochs=1), tiny_data(), tmp_path).run()

    with pytest.raises(DataError, match="belongs to run"):
        TrainingRun(RunSpec("pulse", "C1D1"), tiny_settings(epochs=1), tiny_data(), tmp_path).run(resume=True)


def test_resume_rejects_changed_settings_but_allows_more_epochs(tmp_path):
    TrainingRun(RunSpec("digital"), tiny_settings(epochs=1), tiny_data(), tmp_path).run()

    with pytest.raises(ConfigError, match="lr was 0.05 and is 0.1 now"):
        TrainingRun(RunSpec("digital"), tiny_settings(epochs=1, lr=0.1), tiny_data(), tmp_path).run(resume=True)
    assert len(TrainingRun(RunSpec("digital"), tiny_settings(epochs=2), tiny_data(), tmp_path).run(resume=True)) == 2


def test_nonlinear_device_and_huge_learning_rate_stay_finite(tmp_path):
    device_file = tmp_path / "nonlinear.toml"
    device_file.write_text(NONLINEAR_DEVICE)
    for scheme in ("identical", "non-identical"):
        run = TrainingRun(RunSpec("pulse", str(device_file), scheme), tiny_settings(epochs=1, lr=1e3), tiny_data(),
                          tmp_path / scheme)

        history = run.run()

        assert history[-1]["skipped_steps"] == 0
        assert torch.isfinite(torch.tensor(history[-1]["train_loss"]))
        assert history[-1]["capped_fraction"] > 0.5
        for name, value in run.network.state_dict().items():
            assert torch.isfinite(value.float()).all(), name


def test_extreme_learning_rate_skips_steps_without_nan(tmp_path):
    run = TrainingRun(RunSpec("pulse", "C1D8"), tiny_settings(epochs=1, lr=1e12), tiny_data(), tmp_path)

    history = run.run()

    for name, value in run.network.state_dict().items():
        assert torch.isfinite(value.float()).all(), name
    assert history[-1]["skipped_steps"] > 0


def test_profile_metrics_rank_linearity():
    ideal, c4d1, non_spikes_2 = (profile_metrics(name) for name in ("ideal", "C4D1", "Non_spikes_2"))

    assert abs(ideal["nonlinearity_up"]) < 0.01
    assert abs(ideal["asymmetric_nonlinearity"]) < 0.01
    assert non_spikes_2["nonlinearity_down"] < c4d1["nonlinearity_down"]
    assert abs(non_spikes_2["asymmetric_nonlinearity"]) < abs(c4d1["asymmetric_nonlinearity"])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_rank(rank: int, world_size: int, port: int, folder: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    distributed = init_distributed("cpu")
    try:
        run = TrainingRun(RunSpec("pulse", "C4D1", "identical"), tiny_settings(epochs=1), tiny_data(),
                          Path(folder) / "run", distributed)
        run.run()
        torch.save(run.network.state_dict(), Path(folder) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_cpu_processes_stay_identical(tmp_path):
    mp.spawn(train_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)

    first = torch.load(tmp_path / "rank0.pt", weights_only=True)
    second = torch.load(tmp_path / "rank1.pt", weights_only=True)
    initial = TrainingRun(RunSpec("digital"), tiny_settings(epochs=1), tiny_data(), tmp_path / "initial").network.state_dict()
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert not torch.equal(first["classifier.3.weight"], initial["classifier.3.weight"])
    assert (tmp_path / "run" / "log.csv").is_file()


def write_photos(root: Path, classes: int = 3, per_class: int = 6) -> Path:
    generator = torch.Generator().manual_seed(0)
    for label in range(classes):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = torch.randint(0, 256, (20, 24, 3), generator=generator, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(folder / f"{index}.jpg")
    return root


def test_cli_train_writes_results(tmp_path, capsys):
    data_root = write_photos(tmp_path / "photos")
    output = tmp_path / "out"

    code = main(["train", "--data-root", str(data_root), "--model", "vgg-small", "--epochs", "1", "--image-size", "16",
                 "--batch-size", "8", "--device-profile", "Non_spikes_1", "--pulse-scheme", "non-identical",
                 "--output", str(output), "--no-progress"])

    assert code == 0
    for name in ("summary.json", "accuracy.png", "digital/log.csv", "digital/checkpoint.pt",
                 "Non_spikes_1-non-identical/log.csv", "Non_spikes_1-non-identical/checkpoint.pt"):
        assert (output / name).is_file(), name
    assert "Non_spikes_1-non-identical" in capsys.readouterr().out


def test_cli_sweep_writes_table(tmp_path, capsys):
    data_root = write_photos(tmp_path / "photos")
    output = tmp_path / "sweep"

    code = main(["sweep", "--data-root", str(data_root), "--models", "vgg-small", "--profiles", "C4D1,Non_spikes_2",
                 "--pulse-schemes", "identical,non-identical", "--epochs", "1", "--image-size", "16",
                 "--device-layers", "classifier", "--output", str(output), "--no-progress"])

    assert code == 0
    rows = list(csv.DictReader(open(output / "results.csv")))
    assert [(row["profile"], row["scheme"]) for row in rows] == [
        ("digital", "digital"), ("C4D1", "identical"), ("C4D1", "non-identical"),
        ("Non_spikes_2", "identical"), ("Non_spikes_2", "non-identical")]
    assert (output / "sweep.png").is_file()
    assert "| vgg-small | Non_spikes_2 |" in (output / "results.md").read_text()
    assert "valid top-1" in capsys.readouterr().out


def exit_code(arguments: list[str]) -> int:
    """Run ``cim-run``; argument errors exit through SystemExit, other bad input returns the code."""
    try:
        return main(arguments)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("arguments, message", [
    (["train", "--data-root", "{missing}"], "data folder not found: .*missing"),
    (["train", "--data-root", "{photos}", "--device-profile", "C9D9"], "unknown device profile 'C9D9'"),
    (["train", "--data-root", "{photos}", "--freeze-features"], "--freeze-features .* --device-layers classifier"),
    (["train", "--data-root", "{photos}", "--model", "alexnet"], "--model 'alexnet' is neither"),
    (["sweep", "--data-root", "{photos}", "--pulse-schemes", "identical,random"], "--pulse-schemes random is invalid"),
    (["train", "--data-root", "{photos}", "--lr", "-1"], "must be a finite number above 0"),
    (["train", "--data-root", "{photos}", "--tolerance", "0.7"], "--tolerance 0.7 is invalid"),
    (["train", "--data-root", "{photos}", "--weight-range-factor", "0.5"], "weight_range_factor=0.5 is invalid"),
    (["train", "--data-root", "{photos}", "--classes", "5"], "--classes 5 is invalid"),
    (["train", "--data-root", "{photos}", "--dataset", "food101", "--image-size", "4"], "--image-size 4 is invalid"),
], ids=["missing root", "unknown profile", "freeze without classifier", "unknown model", "unknown scheme", "negative lr",
        "tolerance", "weight range", "too many classes", "tiny image"])
def test_cli_bad_input_exits_2(tmp_path, capsys, arguments, message):
    photos = write_photos(tmp_path / "photos", classes=2, per_class=2)
    filled = [a.format(missing=tmp_path / "missing", photos=photos) for a in arguments]

    # The case's own options come last, so that they override the defaults of this test.
    code = exit_code([filled[0], "--output", str(tmp_path / "out"), "--no-progress", "--epochs", "1", "--image-size", "16",
                      *filled[1:]])

    assert code == 2
    assert re.search(message, capsys.readouterr().err)
