"""Training data: the study's three photo sets and any ImageFolder tree, decoded once into uint8 tensors.

Each ``--dataset`` accepts two layouts under ``--data-root``, and nothing is ever downloaded:

* torchvision's archive layout, read by torchvision's own class with ``download=False``. That is
  ``flowers-102/`` with ``jpg/``, ``imagelabels.mat`` and ``setid.mat`` (splits train and val), or
  ``food-101/`` with ``images/``, ``meta/train.json`` and ``meta/test.json``, or ``stanford_cars/``
  with ``devkit/cars_meta.mat``, ``devkit/cars_train_annos.mat``, ``cars_train/``,
  ``cars_test_annos_withlabels.mat`` and ``cars_test/``.

* class folders read by ``ImageFolder``: ``train/<class>/`` with ``valid/``, ``val/`` or ``test/``
  beside it, or ``train/<class>/`` alone, or ``<class>/`` directly under the root. Without a
  validation folder a seeded fraction of each class is held out for validation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torchvision.transforms import v2
from tqdm import tqdm

from cim_runtime.data import LocalFlowers102, is_flowers102_root, load_rgb_image
from cim_runtime.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DATASETS = ("flowers102", "food101", "stanford-cars", "imagefolder")
VALIDATION_FOLDERS = ("valid", "val", "test")
LAYOUT_HELP = ("use torchvision's archive layout (flowers-102/, food-101/ or stanford_cars/ under the root) or class "
               "folders: ROOT/train/<class>/ with ROOT/valid/<class>/, ROOT/train/<class>/ alone, or ROOT/<class>/")


@dataclass
class Samples:
    """Image files with labels, and the class names that the labels index."""

    paths: list[str]
    labels: list[int]
    classes: list[str]


@dataclass
class TrainingData:
    """Both splits decoded to uint8 tensors of shape (N, 3, side, side)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    valid_images: torch.Tensor
    valid_labels: torch.Tensor
    classes: list[str]
    #: Source layout and split sizes, for the run summary.
    description: str


def _archive_samples(dataset: str, root: Path, split: str) -> Samples | None:
    """Read torchvision's archive layout of ``dataset`` under ``root``, or return None where it is absent."""
    if dataset == "flowers102" and is_flowers102_root(root):
        data = LocalFlowers102(str(root), split=split, download=False)
        return Samples([str(p) for p in data._image_files], list(data._labels), [str(k + 1) for k in range(102)])
    if dataset == "food101" and (root / "food-101" / "meta").is_dir():
        data = torchvision.datasets.Food101(str(root), split=split, download=False)
        return Samples([str(p) for p in data._image_files], list(data._labels), list(data.classes))
    if dataset == "stanford-cars" and (root / "stanford_cars" / "devkit").is_dir():
        data = torchvision.datasets.StanfordCars(str(root), split=split, download=False)
        return Samples([path for path, _ in data._samples], [label for _, label in data._samples], list(data.classes))
    return None


ARCHIVE_SPLITS = {"flowers102": ("train", "val"), "food101": ("train", "test"), "stanford-cars": ("train", "test")}


def _folder_samples(folder: Path) -> Samples:
    try:
        data = torchvision.datasets.ImageFolder(str(folder), allow_empty=False)
    except (FileNotFoundError, OSError) as exc:
        raise DataError(f"no images found under {folder}: {exc}; {LAYOUT_HELP}") from None
    classes = list(data.classes)
    if all(name.isdigit() for name in classes):
        # Oxford Flowers names its classes 1..102; keep their numeric order.
        order = sorted(range(len(classes)), key=lambda k: int(classes[k]))
        rank = {old: new for new, old in enumerate(order)}
        return Samples([p for p, _ in data.samples], [rank[label] for _, label in data.samples], [classes[k] for k in order])
    return Samples([p for p, _ in data.samples], [label for _, label in data.samples], classes)


def _holdout(samples: Samples, fraction: float, seed: int) -> tuple[Samples, Samples]:
    """Split off a seeded ``fraction`` of every class for validation (at least one image per class)."""
    generator = torch.Generator().manual_seed(seed)
    train, valid = Samples([], [], samples.classes), Samples([], [], samples.classes)
    labels = torch.tensor(samples.labels)
    for label in range(len(samples.classes)):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)].tolist()
        count = max(1, round(fraction * len(members))) if len(members) > 1 else 0
        for position, index in enumerate(members):
            target = valid if position < count else train
            target.paths.append(samples.paths[index])
            target.labels.append(label)
    return train, valid


def _subset(samples: Samples, keep: int) -> Samples:
    labels = [label for label in samples.labels if label < keep]
    paths = [path for path, label in zip(samples.paths, samples.labels) if label < keep]
    return Samples(paths, labels, samples.classes[:keep])


def find_samples(dataset: str, root: Path, holdout_fraction: float = 0.2, seed: int = 0,
                 max_classes: int | None = None) -> tuple[Samples, Samples, str]:
    """Return the training and validation samples of ``dataset`` under ``root`` and a description.

    ``max_classes`` keeps the first classes in class order (numeric for Oxford Flowers folders).

    Raises:
        ConfigError: the dataset name or the holdout fraction is invalid.
        DataError: the root is missing or has neither of the layouts in the module docstring.
    """
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset {dataset!r} is invalid: use one of {', '.join(DATASETS)}")
    if not 0 < holdout_fraction < 1:
        raise ConfigError(f"holdout fraction {holdout_fraction} is invalid: must be above 0 and below 1")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}; pass --data-root with an existing folder")

    try:
        archive = _archive_samples(dataset, root, ARCHIVE_SPLITS.get(dataset, ("train", "test"))[0])
        if archive is not None:
            valid = _archive_samples(dataset, root, ARCHIVE_SPLITS[dataset][1])
            description = f"{dataset} archive layout, splits {'/'.join(ARCHIVE_SPLITS[dataset])}"
            train = archive
        else:
            train, valid, description = _folder_layout(root, holdout_fraction, seed)
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise DataError(f"cannot read {dataset} data under {root}: {type(exc).__name__}: {exc}; {LAYOUT_HELP}") from exc

    if max_classes is not None:
        if max_classes < 2 or max_classes > len(train.classes):
            raise ConfigError(f"--classes {max_classes} is invalid: the data has {len(train.classes)} classes, use 2 to {len(train.classes)}")
        train, valid = _subset(train, max_classes), _subset(valid, max_classes)
        description += f", first {max_classes} classes"
    if not train.paths or not valid.paths:
        raise DataError(f"{root} gives {len(train.paths)} training and {len(valid.paths)} validation images; both splits need images")
    return train, valid, description


def _folder_layout(root: Path, holdout_fraction: float, seed: int) -> tuple[Samples, Samples, str]:
    if (root / "train").is_dir():
        train = _folder_samples(root / "train")
        for name in VALIDATION_FOLDERS:
            if (root / name).is_dir():
                valid = _folder_samples(root / name)
                if valid.classes != train.classes:
                    raise DataError(f"{root / name} has other class folders than {root / 'train'}; both need the same classes")
                return train, valid, f"class folders train/ and {name}/"
        train, valid = _holdout(train, holdout_fraction, seed)
        return train, valid, f"class folders train/, {holdout_fraction:.0%} of each class held out (seed {seed})"
    train, valid = _holdout(_folder_samples(root), holdout_fraction, seed)
    return train, valid, f"class folders, {holdout_fraction:.0%} of each class held out (seed {seed})"


def decode_images(paths: list[str], side_px: int, label: str, progress: bool = True) -> torch.Tensor:
    """Decode photos to a uint8 tensor (N, 3, side, side): short side resized to ``side_px``, centre crop.

    Raises:
        DataError: naming the first unreadable photo.
    """
    prepare = v2.Compose([v2.PILToTensor(), v2.Resize(side_px, antialias=True), v2.CenterCrop(side_px)])
    images = torch.empty(len(paths), 3, side_px, side_px, dtype=torch.uint8)
    for index, path in enumerate(tqdm(paths, desc=f"decode {label}", unit="img", disable=not progress)):
        images[index] = prepare(load_rgb_image(path))
    return images


def load_training_data(dataset: str, root: Path, image_size_px: int, *, holdout_fraction: float = 0.2, seed: int = 0,
                       max_classes: int | None = None, progress: bool = True) -> TrainingData:
    """Find and decode both splits; images are cached at ``8/7`` of the input size for random crops."""
    if not 8 <= image_size_px <= 1024:
        raise ConfigError(f"--image-size {image_size_px} is invalid: must be between 8 and 1024 pixels")
    train, valid, description = find_samples(dataset, root, holdout_fraction, seed, max_classes)
    side_px = round(image_size_px * 8 / 7)
    logger.info("decoding %d training and %d validation photos of %s at %d px", len(train.paths), len(valid.paths), root, side_px)
    return TrainingData(
        train_images=decode_images(train.paths, side_px, "train", progress),
        train_labels=torch.tensor(train.labels),
        valid_images=decode_images(valid.paths, side_px, "valid", progress),
        valid_labels=torch.tensor(valid.labels),
        classes=train.classes,
        description=f"{description}: {len(train.paths)} training, {len(valid.paths)} validation photos",
    )
