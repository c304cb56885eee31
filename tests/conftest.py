"""Shared fixtures: paths to the real data beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FLOWERS = SHARED_DATA / "images" / "oxford102_flowers"


@pytest.fixture
def flowers_root() -> Path:
    """The Oxford 102 Flowers folder in ImageFolder layout, or a skip where it is absent."""
    if not (FLOWERS / "valid").is_dir():
        pytest.skip(f"real photos not found at {FLOWERS}")
    return FLOWERS


@pytest.fixture
def flowers_subset(tmp_path: Path, flowers_root: Path) -> Path:
    """An ImageFolder tree of real validation photos from 8 classes, as symbolic links."""
    root = tmp_path / "subset"
    for folder in ["1", "2", "10", "37", "51", "77", "89", "102"]:
        target = root / folder
        target.mkdir(parents=True)
        for photo in sorted((flowers_root / "valid" / folder).glob("*.jpg"))[:4]:
            (target / photo.name).symlink_to(photo)
    return root


FOOD101 = SHARED_DATA / "images" / "food101_64px_10cls"
STANFORD_CARS = SHARED_DATA / "images" / "stanford_cars_10cls"


def shared_folder(folder: Path) -> Path:
    """Return ``folder``, or skip the test where the real data beside the repository is absent."""
    if not folder.is_dir():
        pytest.skip(f"real photos not found at {folder}")
    return folder


@pytest.fixture
def food101_root() -> Path:
    """Ten Food-101 classes at 64 px in class folders under train/."""
    return shared_folder(FOOD101 / "train").parent


@pytest.fixture
def cars_root() -> Path:
    """Ten Stanford Cars classes in class folders."""
    return shared_folder(STANFORD_CARS)
