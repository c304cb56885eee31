"""Training data: class-folder trees and torchvision's archive layouts built from real photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from cim_runtime.errors import ConfigError, DataError
from cim_runtime.training.datasets import find_samples, load_training_data


def test_food101_class_folders(food101_root):
    train, valid, description = find_samples("food101", food101_root)

    assert len(train.classes) == 10
    assert len(valid.paths) == 600
    assert len(train.paths) == 2400
    assert not set(train.paths) & set(valid.paths)
    assert "held out" in description


def test_stanford_cars_class_folders(cars_root):
    train, valid, _ = find_samples("stanford-cars", cars_root, holdout_fraction=0.25)

    assert train.classes[0] == "AM_General_Hummer_SUV_2000"
    assert len(train.paths) + len(valid.paths) == 411
    assert set(valid.labels) == set(range(10))


def test_flowers_folders_keep_numeric_order(flowers_root):
    train, valid, description = find_samples("flowers102", flowers_root, max_classes=3)

    assert train.classes == ["1", "2", "3"]
    assert set(valid.labels) == {0, 1, 2}
    assert all(Path(path).parent.name == str(label + 1) for path, label in zip(train.paths, train.labels))
    assert "train/ and valid/" in description


def test_holdout_is_seeded(food101_root):
    first = find_samples("imagefolder", food101_root, seed=3)[1].paths
    again = find_samples("imagefolder", food101_root, seed=3)[1].paths
    other = find_samples("imagefolder", food101_root, seed=4)[1].paths

    assert first == again
    assert first != other


def pick_photos(food101_root: Path, classes: int, per_class: int) -> dict[str, list[Path]]:
    folders = sorted(p for p in (food101_root / "train").iterdir() if p.is_dir())[:classes]
    return {folder.name: sorted(folder.glob("*.jpg"))[:per_class] for folder in folders}


def test_food101_archive_layout(tmp_path, food101_root):
    photos = pick_photos(food101_root, classes=3, per_class=4)
    base = tmp_path / "food-101"
    (base / "meta").mkdir(parents=True)
    meta = {"train": {}, "test": {}}
    for name, files in photos.items():
        (base / "images" / name).mkdir(parents=True)
        for position, photo in enumerate(files):
            (base / "images" / name / photo.name).symlink_to(photo)
            meta["train" if position < 3 else "test"].setdefault(name, []).append(f"{name}/{photo.stem}")
    for split, content in meta.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(content))

    data = load_training_data("food101", tmp_path, 16, progress=False)

    assert data.classes == sorted(photos)
    assert tuple(data.train_images.shape) == (9, 3, 18, 18)
    assert len(data.valid_labels) == 3
    assert "archive layout" in data.description


def test_flowers102_archive_layout(tmp_path, flowers_root):
    base = tmp_path / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    labels = []
    for label in (1, 2):
        for photo in sorted((flowers_root / "valid" / str(label)).glob("*.jpg"))[:4]:
            labels.append(label)
            (base / "jpg" / f"image_{len(labels):05d}.jpg").symlink_to(photo)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": np.array([labels])})
    scipy.io.savemat(base / "setid.mat", {"trnid": np.array([[1, 2, 3, 5, 6, 7]]), "valid": np.array([[4, 8]]),
                                          "tstid": np.array([[4, 8]])})

    train, valid, description = find_samples("flowers102", tmp_path)

    assert train.labels == [0, 0, 0, 1, 1, 1]
    assert valid.labels == [0, 1]
    assert len(train.classes) == 102
    assert "train/val" in description


def test_stanford_cars_archive_layout(tmp_path, cars_root):
    base = tmp_path / "stanford_cars"
    folders = sorted(p for p in cars_root.iterdir() if p.is_dir())[:2]
    records = {"train": [], "test": []}
    for class_number, folder in enumerate(folders, start=1):
        for position, photo in enumerate(sorted(folder.glob("*.jpg"))[:3]):
            split = "train" if position < 2 else "test"
            target = base / f"cars_{split}" / f"{class_number}_{photo.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(photo)
            records[split].append((target.name, class_number))
    (base / "devkit").mkdir()
    annotation_type = [("fname", object), ("class", object)]
    for split, path in (("train", base / "devkit" / "cars_train_annos.mat"), ("test", base / "cars_test_annos_withlabels.mat")):
        scipy.io.savemat(path, {"annotations": np.array(records[split], dtype=annotation_type)[np.newaxis, :]})
    scipy.io.savemat(base / "devkit" / "cars_meta.mat",
                     {"class_names": np.array([folder.name for folder in folders], dtype=object)[np.newaxis, :]})

    train, valid, _ = find_samples("stanford-cars", tmp_path)

    assert train.classes == [folder.name for folder in folders]
    assert train.labels == [0, 0, 1, 1]
    assert valid.labels == [0, 1]


def test_missing_root_is_data_error(tmp_path):
    with pytest.raises(DataError, match="data folder not found: .*missing"):
        find_samples("food101", tmp_path / "missing")


def test_folder_without_images_is_data_error(tmp_path):
    (tmp_path / "empty_class").mkdir()

    with pytest.raises(DataError, match="no images found under .*archive layout"):
        find_samples("imagefolder", tmp_path)


def test_incomplete_archive_is_data_error(tmp_path):
    (tmp_path / "food-101" / "meta").mkdir(parents=True)

    with pytest.raises(DataError, match=r"cannot read food101 data under .*food-101/ or stanford_cars/"):
        find_samples("food101", tmp_path)


def test_class_subset_bounds(food101_root):
    with pytest.raises(ConfigError, match="--classes 11 is invalid"):
        find_samples("food101", food101_root, max_classes=11)
    with pytest.raises(ConfigError, match="--dataset"):
        find_samples("cifar", food101_root)
