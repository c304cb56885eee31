"""The epoch loop of one training run: digital, pulse-update or noise-aware, on one or several processes.

A run writes into its own folder: ``log.csv`` (one row per epoch, rewritten after every epoch) and
``checkpoint.pt`` (network, optimizer, device state, random generators and the log, saved after
every epoch). ``resume=True`` continues from the checkpoint, which is read with
``torch.load(weights_only=True)``.

Several processes (``torchrun``) train one run together with DistributedDataParallel: each takes its
share of every batch order, gradients are averaged, and the device pairs draw from a generator seeded
alike in every process, so all processes keep identical weights. Process 0 writes the files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cim_runtime.device import make_profile
from cim_runtime.errors import ConfigError, DataError
from cim_runtime.files import atomic_write, write_csv
from cim_runtime.training.datasets import TrainingData
from cim_runtime.training.layers import classifier_name, mapped_layers
from cim_runtime.training.models import build_training_network
from cim_runtime.training.noise import NoiseInjector, WeightNoise
from cim_runtime.training.pulse_update import PulseSettings, PulseUpdater, UpdateStats
from cim_runtime.zoo.train import IMAGENET_MEAN, IMAGENET_STD, augment

logger = logging.getLogger(__name__)

TRAINING_MODES = ("digital", "pulse", "noise-aware")
CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.csv"


@dataclass(frozen=True)
class RunSpec:
    """Identity of one run: the training mode, the device profile and the pulse scheme."""

    #: ``digital``, ``pulse`` (pulse-update training) or ``noise-aware``.
    mode: str
    #: Device profile name or device TOML file; unused by ``digital``.
    profile: str = ""
    #: ``identical`` or ``non-identical``; used by ``pulse`` only.
    scheme: str = "identical"

    def __post_init__(self) -> None:
        if self.mode not in TRAINING_MODES:
            raise ConfigError(f"training mode {self.mode!r} is invalid: use one of {', '.join(TRAINING_MODES)}")
        if self.mode != "digital" and not self.profile:
            raise ConfigError(f"training mode {self.mode!r} needs a device profile")

    @property
    def name(self) -> str:
        """Folder name of the run."""
        if self.mode == "digital":
            return "digital"
        stem = Path(self.profile).stem
        return f"{stem}-{self.scheme}" if self.mode == "pulse" else f"{stem}-noise-aware"


@dataclass(frozen=True)
class TrainSettings:
    """Settings shared by every run of a ``train`` or ``sweep`` command."""

    #: Network name or checkpoint folder (see :func:`build_training_network`).
    model: str = "densenet-small"
    epochs: int = 10
    #: Images per batch in each process.
    batch_size: int = 64
    #: Peak SGD learning rate, annealed to 0 by a cosine schedule.
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    #: Network input side in pixels.
    image_size_px: int = 32
    #: ``all`` or ``classifier``: the layers whose weights live on devices.
    device_layers: str = "all"
    #: Train only the classifier on features computed once by the frozen network (no augmentation).
    freeze_features: bool = False
    pulse: PulseSettings = field(default_factory=PulseSettings)
    #: Write-verify tolerance assumed by noise-aware training, as a fraction of the conductance window.
    tolerance_rel: float = 0.01
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"epochs={self.epochs} and batch_size={self.batch_size} must both be at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr {self.lr} is invalid: must be a finite value above 0")
        if not 0 < self.tolerance_rel < 0.5:
            raise ConfigError(f"--tolerance {self.tolerance_rel} is invalid: must be above 0 and below 0.5 (a fraction of the conductance window)")
        if self.freeze_features and self.device_layers != "classifier":
            raise ConfigError("--freeze-features trains only the classifier, so it needs --device-layers classifier")


@dataclass
class Distributed:
    """Rank and size of the process group, and the torch device of this process."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_distributed(accelerator: str = "auto") -> Distributed:
    """Join the process group that ``torchrun`` describes in the environment, or run alone.

    ``accelerator`` is ``auto`` (CUDA where present), ``cpu`` or ``cuda``. The backend is NCCL on CUDA
    and gloo on CPU.

    Raises:
        ConfigError: CUDA was requested but is not available.
    """
    if accelerator not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--accelerator {accelerator!r} is invalid: use auto, cpu or cuda")
    use_cuda = accelerator == "cuda" or (accelerator == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("--accelerator cuda was requested, but torch finds no CUDA device; use --accelerator cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        logger.info("joined process group as rank %d of %d on %s", dist.get_rank(), world_size, device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Distributed(rank=rank, world_size=world_size, device=device)


def _normalize(batch: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std


def centre_crops(images_u8: torch.Tensor, size_px: int) -> torch.Tensor:
    """Return normalized float centre crops of side ``size_px`` from cached uint8 images."""
    offset = (images_u8.shape[-1] - size_px) // 2
    crops = images_u8[:, :, offset:offset + size_px, offset:offset + size_px].float() / 255.0
    return _normalize(crops)


def classifier_features(network: nn.Module, images_u8: torch.Tensor, size_px: int, device: torch.device,
                        progress: bool = False) -> torch.Tensor:
    """Return the inputs of the network's classifier for every image, computed in evaluation mode."""
    classifier = network.get_submodule(classifier_name(network))
    captured = []
    hook = classifier.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach().cpu()))
    network.eval().to(device)
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(images_u8), 256), desc="features", disable=not progress):
                network(centre_crops(images_u8[start:start + 256], size_px).to(device))
    finally:
        hook.remove()
    return torch.cat(captured)


@dataclass
class RunInputs:
    """Inputs of the trainable module: uint8 images (augmented per step) or fixed classifier features."""

    train: torch.Tensor
    train_labels: torch.Tensor
    valid: torch.Tensor
    valid_labels: torch.Tensor
    #: True when ``train`` and ``valid`` are uint8 images, False when they are classifier features.
    images: bool


class TrainingRun:
    """One run: network, optimizer, device model and log, with checkpoint and resume."""

    def __init__(self, spec: RunSpec, settings: TrainSettings, data: TrainingData, folder: Path,
                 distributed: Distributed | None = None, features: dict | None = None):
        self.spec, self.settings, self.folder = spec, settings, Path(folder)
        self.distributed = distributed or Distributed()
        self.network, self.model_description = build_training_network(settings.model, len(data.classes), settings.seed)
        self.inputs = self._inputs(data, features)
        self.module = self.network.get_submodule(classifier_name(self.network)) if settings.freeze_features else self.network
        self.module.to(self.distributed.device)

        parameters = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(parameters, lr=settings.lr, momentum=settings.momentum, nesterov=True,
                                         weight_decay=settings.weight_decay)
        steps = settings.epochs * self.steps_per_epoch
        self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=steps)
        self.updater, self.injector = self._device_model()
        self.trained = nn.parallel.DistributedDataParallel(self.module) if self.distributed.active else self.module
        self.order_generator = torch.Generator().manual_seed(settings.seed)
        self.augment_generator = torch.Generator().manual_seed(settings.seed + 1000 * self.distributed.rank)
        self.history: list[dict] = []

    @property
    def steps_per_epoch(self) -> int:
        share = math.ceil(len(self.inputs.train_labels) / self.distributed.world_size)
        return max(1, math.ceil(share / self.settings.batch_size))

    def _inputs(self, data: TrainingData, features: dict | None) -> RunInputs:
        if not self.settings.freeze_features:
            return RunInputs(data.train_images, data.train_labels, data.valid_images, data.valid_labels, images=True)
        # Features depend only on the frozen network, so a sweep computes them once per model.
        key = self.settings.model
        if features is None or key not in features:
            computed = tuple(classifier_features(self.network, images, self.settings.image_size_px, self.distributed.device,
                                                 self.settings.progress and self.distributed.rank == 0)
                             for images in (data.train_images, data.valid_images))
            if features is not None:
                features[key] = computed
        else:
            computed = features[key]
        return RunInputs(computed[0], data.train_labels, computed[1], data.valid_labels, images=False)

    def _device_model(self) -> tuple[PulseUpdater | None, NoiseInjector | None]:
        if self.spec.mode == "digital":
            return None, None
        profile = make_profile(self.spec.profile)
        layers = mapped_layers(self.network, self.settings.device_layers)
        if self.spec.mode == "pulse":
            settings = PulseSettings(**{**asdict(self.settings.pulse), "scheme": self.spec.scheme})
            return PulseUpdater(layers, profile, settings, seed=self.settings.seed), None
        noise = WeightNoise.from_device(profile, self.settings.tolerance_rel)
        return None, NoiseInjector(layers, noise, seed=self.settings.seed + 1000 * self.distributed.rank)

    # Checkpoints.

    def checkpoint_path(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    def save_checkpoint(self) -> None:
        state = {
            "spec": asdict(self.spec), "epoch": len(self.history), "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "order_generator": self.order_generator.get_state(), "augment_generator": self.augment_generator.get_state(),
            # Dropout draws from torch's global generator.
            "torch_rng": torch.get_rng_state(),
            "device": self.updater.state_dict() if self.updater else {},
            "noise_generator": self.injector.generator.get_state() if self.injector else torch.empty(0),
            "history": self.history,
            "settings": self._fixed_settings(),
        }
        atomic_write(self.checkpoint_path(), lambda temporary: torch.save(state, temporary))

    def _fixed_settings(self) -> dict:
        """Settings a resumed run must share with the run it continues; more epochs or no progress bar may differ."""
        settings = asdict(self.settings)
        for name in ("epochs", "progress"):
            settings.pop(name)
        return json.loads(json.dumps(settings, default=str))

    def load_checkpoint(self) -> None:
        """Restore the state saved after the last finished epoch.

        Raises:
            DataError: the file is not a checkpoint of this run.
        """
        path = self.checkpoint_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
            raise DataError(f"checkpoint {path} cannot be loaded ({type(exc).__name__}: {exc}); delete it to start again") from exc
        if state.get("spec") != asdict(self.spec):
            raise DataError(f"checkpoint {path} belongs to run {state.get('spec')}, not {asdict(self.spec)}; "
                            "resume with the same options or use another --output")
        saved, now = state.get("settings"), self._fixed_settings()
        if saved is not None and saved != now:
            changed = ", ".join(f"{name} was {saved.get(name)!r} and is {now.get(name)!r} now"
                                for name in sorted(set(saved) | set(now)) if saved.get(name) != now.get(name))
            raise ConfigError(f"--resume: {changed}, against the run saved in {path}; resume with the options it was started "
                              "with, or use another --output")
        try:
            self.network.load_state_dict(state["network"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise DataError(f"checkpoint {path} does not fit this network: {' '.join(str(exc).split())[:300]}; "
                            "resume with the same --model, --classes and --device-layers") from exc
        self.schedule.load_state_dict(state["schedule"])
        self.order_generator.set_state(state["order_generator"])
        self.augment_generator.set_state(state["augment_generator"])
        # NOTE: CUDA generators are not saved, so a resumed run on CUDA draws other dropout masks.
        torch.set_rng_state(state["torch_rng"])
        if self.updater:
            self.updater.load_state_dict(state["device"])
        if self.injector:
            self.injector.generator.set_state(state["noise_generator"])
        self.history = list(state["history"])
        logger.info("resumed run %s after epoch %d from %s", self.spec.name, len(self.history), path)

    # Training.

    def run(self, resume: bool = False) -> list[dict]:
        """Train the remaining epochs and return the log, one row per epoch.

        Raises:
            ConfigError: a checkpoint exists and ``resume`` is False.
        """
        if self.checkpoint_path().exists():
            if not resume:
                raise ConfigError(f"{self.checkpoint_path()} exists; pass --resume to continue that run or choose another --output")
            self.load_checkpoint()
        while len(self.history) < self.settings.epochs:
            self.history.append(self.train_epoch(len(self.history) + 1))
            if self.distributed.rank == 0:
                write_csv(self.folder / LOG_FILE, self.history)
                self.save_checkpoint()
        return self.history

    def _batch(self, index: torch.Tensor) -> torch.Tensor:
        if not self.inputs.images:
            return self.inputs.train[index]
        return _normalize(augment(self.inputs.train[index], self.settings.image_size_px, self.augment_generator))

    def _epoch_order(self) -> torch.Tensor:
        """Return this process's share of a permutation that every process draws alike."""
        order = torch.randperm(len(self.inputs.train_labels), generator=self.order_generator)
        return order[self.distributed.rank::self.distributed.world_size]

    def train_epoch(self, epoch: int) -> dict:
        """Train one epoch and return its log row."""
        started = time.monotonic()
        if self.settings.freeze_features:
            self.network.eval()
        self.module.train()
        order = self._epoch_order()
        # Sums over the epoch: loss over finite steps, correct predictions, images, skipped steps, images of finite steps.
        totals = torch.zeros(5, dtype=torch.float64)
        stats = UpdateStats()
        batches = range(0, self.steps_per_epoch * self.settings.batch_size, self.settings.batch_size)
        bar = tqdm(batches, desc=f"{self.spec.name} epoch {epoch}/{self.settings.epochs}", leave=False,
                   disable=not (self.settings.progress and self.distributed.rank == 0))
        for start in bar:
            # A process whose share is shorter reuses its first images, so all take the same number of steps.
            index = order[start:start + self.settings.batch_size]
            if index.numel() == 0:
                index = order[:self.settings.batch_size]
            self._train_step(index, totals, stats)

        if totals[3]:
            logger.warning("run %s epoch %d: the loss was not finite in %d steps, which were skipped; lower --lr",
                           self.spec.name, epoch, int(totals[3]))
        if self.distributed.active:
            dist.all_reduce(totals)
            # Normalization statistics follow each process's last batch; take process 0's everywhere.
            for buffer in self.module.buffers():
                dist.broadcast(buffer, src=0)
        return self._log_row(epoch, totals, stats, time.monotonic() - started)

    def _train_step(self, index: torch.Tensor, totals: torch.Tensor, stats: UpdateStats) -> None:
        """Train on the images ``index`` and add to the epoch's ``totals`` and pulse ``stats``."""
        device = self.distributed.device
        inputs, labels = self._batch(index).to(device), self.inputs.train_labels[index].to(device)
        # A forward pass with a non-finite loss would leave non-finite normalization statistics behind.
        buffers = [buffer.detach().clone() for buffer in self.module.buffers()]
        loss, logits = self._forward_backward(inputs, labels)

        if self._all_finite(loss):
            stats.add(self.updater.step(self.optimizer) if self.updater else self._plain_step())
        else:
            totals[3] += 1
            with torch.no_grad():
                for buffer, saved in zip(self.module.buffers(), buffers):
                    buffer.copy_(saved)
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()

        if torch.isfinite(loss):
            totals[0] += float(loss) * len(index)
            totals[4] += len(index)
        totals[1] += float((logits.argmax(1) == labels).sum())
        totals[2] += len(index)

    def _plain_step(self) -> UpdateStats:
        self.optimizer.step()
        return UpdateStats()

    def _forward_backward(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.injector:
            with self.injector.perturbed():
                logits = self.trained(inputs)
                loss = F.cross_entropy(logits, labels)
                loss.backward()
        else:
            logits = self.trained(inputs)
            loss = F.cross_entropy(logits, labels)
            loss.backward()
        return loss.detach(), logits.detach()

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Tell whether the loss is finite in every process, so that all skip or all step."""
        flag = torch.tensor([1.0 if bool(torch.isfinite(loss)) else 0.0])
        if self.distributed.active:
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() == 1.0)

    def _log_row(self, epoch: int, totals: torch.Tensor, stats: UpdateStats, seconds: float) -> dict:
        images = max(float(totals[2]), 1.0)
        row = {
            # An epoch without a single finite loss logs an empty train_loss.
            "epoch": epoch, "train_loss": round(float(totals[0] / totals[4]), 6) if totals[4] else None,
            "train_top1": round(float(totals[1]) / images, 6), "valid_top1": round(self.evaluate(), 6),
            "pulses_per_weight_update": round(stats.pulses / stats.weights, 6) if stats.weights else 0.0,
            "capped_fraction": round(stats.capped / stats.weights, 6) if stats.weights else 0.0,
            "skipped_steps": int(totals[3]), "time_s": round(seconds, 2),
        }
        logger.info("run %s epoch %d: %s", self.spec.name, epoch, row)
        return row

    def evaluate(self) -> float:
        """Return top-1 accuracy on the validation split (centre crops)."""
        self.module.eval()
        device = self.distributed.device
        correct = 0
        with torch.no_grad():
            for start in range(0, len(self.inputs.valid_labels), 256):
                batch = self.inputs.valid[start:start + 256]
                batch = centre_crops(batch, self.settings.image_size_px) if self.inputs.images else batch
                logits = self.module(batch.to(device))
                correct += int((logits.argmax(1).cpu() == self.inputs.valid_labels[start:start + 256]).sum())
        return correct / max(1, len(self.inputs.valid_labels))
