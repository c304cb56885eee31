"""Dataset loaders on real photos: ImageFolder trees and torchvision's Flowers102 layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from cim_runtime.data import check_images_readable, is_flowers102_root, open_dataset
from cim_runtime.errors import DataError
from cim_runtime.zoo import DEFAULT_MODEL_DIR, DEFAULT_SAMPLE_DIR, load_recipe


@pytest.fixture
def recipe():
    return load_recipe(DEFAULT_MODEL_DIR)


def build_flowers102_layout(root: Path, flowers_root: Path, folders: list[str]) -> dict[int, int]:
    """Lay out torchvision's flowers-102/ (jpg/, imagelabels.mat, setid.mat) from real photos."""
    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    labels = {}
    for folder in folders:
        for photo in sorted((flowers_root / "valid" / folder).glob("image_*.jpg"))[:2]:
            image_id = int(photo.stem.split("_")[1])
            (base / "jpg" / photo.name).symlink_to(photo)
            labels[image_id] = int(folder)
    highest = max(labels)
    all_labels = np.ones(highest, dtype=np.uint8)
    for image_id, label in labels.items():
        all_labels[image_id - 1] = label
    scipy.io.savemat(base / "imagelabels.mat", {"labels": all_labels[None, :]})
    ids = np.array(sorted(labels))[None, :]
    scipy.io.savemat(base / "setid.mat", {"trnid": ids, "valid": ids, "tstid": ids})
    return labels


def test_flowers102_layout_labels_match_class_folders(tmp_path, flowers_root, recipe):
    labels = build_flowers102_layout(tmp_path, flowers_root, ["3", "40", "101"])
    assert is_flowers102_root(tmp_path)
    dataset = open_dataset(tmp_path, recipe, split="test")
    assert len(dataset) == len(labels)
    for index in range(len(dataset)):
        image, label = dataset[index]
        assert image.shape == (3, recipe.input_size_px, recipe.input_size_px)
        assert recipe.classes[label].folder in {"3", "40", "101"}
    assert sorted(recipe.classes[label].folder for _, label in (dataset[i] for i in range(len(dataset)))) == sorted(
        str(label) for label in labels.values()
    )


def test_image_folder_maps_folders_to_model_classes(flowers_subset, recipe):
    dataset = open_dataset(flowers_subset, recipe)
    folder_of = {sample[0]: Path(sample[0]).parent.name for sample in dataset.samples}
    for path, target in dataset.samples:
        assert dataset.target_transform(target) == [c.folder for c in recipe.classes].index(folder_of[path])


def test_image_folder_accepts_readable_class_names(tmp_path, flowers_root, recipe):
    named = tmp_path / "named" / recipe.classes[4].name
    named.mkdir(parents=True)
    photo = next((flowers_root / "valid" / recipe.classes[4].folder).glob("*.jpg"))
    (named / photo.name).symlink_to(photo)
    dataset = open_dataset(tmp_path / "named", recipe)
    assert dataset[0][1] == 4


def test_bundled_sample_covers_every_class(recipe):
    dataset = open_dataset(DEFAULT_SAMPLE_DIR, recipe)
    assert len(dataset.classes) == len(recipe.classes)
    check_images_readable(dataset)


def test_unknown_class_folder_is_rejected(tmp_path, recipe):
    (tmp_path / "tulips_from_mars").mkdir()
    (tmp_path / "tulips_from_mars" / "a.jpg").write_bytes((DEFAULT_SAMPLE_DIR / "1").glob("*.jpg").__next__().read_bytes())
    with pytest.raises(DataError, match="tulips_from_mars"):
        open_dataset(tmp_path, recipe)


def test_corrupt_image_is_named(tmp_path, recipe):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    dataset = open_dataset(tmp_path, recipe)
    with pytest.raises(DataError, match="broken.jpg"):
        check_images_readable(dataset)


def test_missing_folder_is_rejected(tmp_path, recipe):
    with pytest.raises(DataError, match="not found"):
        open_dataset(tmp_path / "absent", recipe)


def test_empty_folder_is_rejected(tmp_path, recipe):
    (tmp_path / "1").mkdir()
    with pytest.raises(DataError, match="no images"):
        open_dataset(tmp_path, recipe)


def test_corrupt_flowers102_labels_are_rejected(tmp_path, flowers_root, recipe):
    build_flowers102_layout(tmp_path, flowers_root, ["3"])
    (tmp_path / "flowers-102" / "imagelabels.mat").write_bytes(b"MATLAB 5.0 but truncated")
    with pytest.raises(DataError, match="cannot open Flowers102"):
        open_dataset(tmp_path, recipe, split="test")


def test_flowers102_split_without_ids_is_rejected(tmp_path, flowers_root, recipe):
    build_flowers102_layout(tmp_path, flowers_root, ["3"])
    scipy.io.savemat(tmp_path / "flowers-102" / "setid.mat", {"trnid": np.array([[1]])})
    with pytest.raises(DataError, match="cannot open Flowers102"):
        open_dataset(tmp_path, recipe, split="test")
