"""Image datasets for inference: ImageFolder trees and torchvision's Flowers102 layout.

Class folders are matched to a model's classes by name, so an ImageFolder tree may hold any subset of
the model's classes in any order. Nothing is ever downloaded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from PIL import Image, UnidentifiedImageError

#: Errors Pillow raises on unreadable or hostile files; DecompressionBombError is not an OSError.
IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)
from torchvision import transforms

from cim_runtime.errors import DataError
from cim_runtime.zoo import Recipe

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def eval_transform(recipe: Recipe) -> transforms.Compose:
    """Resize the short side, crop the centre and normalize, as the recipe was evaluated."""
    return transforms.Compose(
        [
            transforms.Resize(recipe.resize_px),
            transforms.CenterCrop(recipe.input_size_px),
            transforms.ToTensor(),
            transforms.Normalize(recipe.normalize_mean, recipe.normalize_std),
        ]
    )


def load_rgb_image(path: str) -> Image.Image:
    """Open an image file as RGB, turning any decoding failure into a :class:`DataError`."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except IMAGE_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {exc}; remove or replace the file") from exc


def is_flowers102_root(root: Path) -> bool:
    """Tell whether ``root`` has torchvision's Flowers102 layout (``flowers-102/jpg`` and the .mat files)."""
    base = root / "flowers-102"
    return (base / "jpg").is_dir() and (base / "imagelabels.mat").is_file() and (base / "setid.mat").is_file()


def _model_index_for_folder(recipe: Recipe) -> dict[str, int]:
    """Map both class folder names and readable class names to the model's output index."""
    index = {}
    for position, entry in enumerate(recipe.classes):
        index[entry.folder] = position
        index[entry.name] = position
    return index


def open_image_folder(root: Path, recipe: Recipe) -> torchvision.datasets.ImageFolder:
    """Open an ImageFolder tree whose class folders are a subset of the model's classes.

    Raises:
        DataError: the folder is missing, contains no images, or has a class the model does not know.
    """
    try:
        dataset = torchvision.datasets.ImageFolder(
            str(root), transform=eval_transform(recipe), loader=load_rgb_image, allow_empty=False
        )
    except (FileNotFoundError, OSError):
        raise DataError(f"no images found under {root}: expected class folders with images, <root>/<class>/<image>.jpg") from None

    index = _model_index_for_folder(recipe)
    unknown = [name for name in dataset.classes if name not in index]
    if unknown:
        shown = ", ".join(repr(name) for name in unknown[:5])
        raise DataError(
            f"{len(unknown)} class folder(s) under {root} are not classes of model {recipe.name!r}: {shown}; "
            f"name class folders as the model's folders ({recipe.classes[0].folder!r}..{recipe.classes[-1].folder!r}) "
            f"or by class name (such as {recipe.classes[0].name!r})"
        )
    remap = [index[name] for name in dataset.classes]
    dataset.target_transform = remap.__getitem__
    return dataset


class LocalFlowers102(torchvision.datasets.Flowers102):
    """torchvision's Flowers102 reader for a layout on disk, without the checksum of the .mat files.

    torchvision compares ``imagelabels.mat`` and ``setid.mat`` with the MD5 sums of the published
    files, so a layout rebuilt from another copy of the photos (a subset, or other splits) would be
    rejected. Downloads stay off, and the loader still needs ``jpg/`` and both files.
    """

    def _check_integrity(self) -> bool:
        return is_flowers102_root(Path(self.root))


def open_flowers102(root: Path, recipe: Recipe, split: str) -> torchvision.datasets.Flowers102:
    """Open torchvision's Flowers102 (download off); its label k is the class folder ``str(k + 1)``."""
    expected = [str(k + 1) for k in range(102)]
    if [entry.folder for entry in recipe.classes] != expected:
        raise DataError(f"model {recipe.name!r} is not a 102-class Oxford Flowers model, so it cannot classify {root}")
    try:
        return LocalFlowers102(
            str(root), split=split, transform=eval_transform(recipe), download=False, loader=load_rgb_image
        )
    except Exception as exc:  # scipy's .mat reader raises many types on a corrupt file
        raise DataError(f"cannot open Flowers102 data under {root}: {type(exc).__name__}: {exc}") from exc


def open_dataset(root: Path, recipe: Recipe, split: str = "test") -> torch.utils.data.Dataset:
    """Open ``root`` as Flowers102 (if it has that layout) or as an ImageFolder tree.

    Args:
        root: a folder; ``<root>/flowers-102/`` selects torchvision's Flowers102 loader.
        recipe: the model's recipe, for the transform and the class list.
        split: Flowers102 split (``train``, ``val`` or ``test``); ignored for ImageFolder trees.
    """
    root = Path(root)
    if root.is_file():
        raise DataError(f"--data-root {root} is a file; pass the folder that contains the class folders")
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}; pass --data-root with an existing folder")
    if is_flowers102_root(root):
        return open_flowers102(root, recipe, split)
    if root.name == "flowers-102" and is_flowers102_root(root.parent):
        raise DataError(f"--data-root {root} is the flowers-102 folder itself; pass the folder above it, {root.parent}")
    base = root if root.name == "flowers-102" else root / "flowers-102"
    if base.is_dir():
        missing = [name for name in ("jpg", "imagelabels.mat", "setid.mat") if not (base / name).exists()]
        raise DataError(f"{base} is an incomplete Flowers102 layout: {', '.join(missing)} missing")
    return open_image_folder(root, recipe)


def image_paths(dataset: torch.utils.data.Dataset) -> list[str]:
    """List the image files of an ImageFolder or Flowers102 dataset."""
    if hasattr(dataset, "samples"):
        return [path for path, _ in dataset.samples]
    return [str(path) for path in getattr(dataset, "_image_files", [])]


def check_images_readable(dataset: torch.utils.data.Dataset) -> None:
    """Open every image header before any long work starts, so a bad file fails fast.

    Raises:
        DataError: naming the first unreadable file.
    """
    for path in image_paths(dataset):
        try:
            with Image.open(path) as image:
                image.verify()
        except IMAGE_ERRORS as exc:
            raise DataError(f"cannot read image {path}: {exc}; remove or replace the file") from exc
