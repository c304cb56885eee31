"""Train a bundled network digitally on an ImageFolder dataset and write its checkpoint and recipe.

Run as ``python -m cim_runtime.zoo.train --data-root DIR --output DIR``. The data root contains
``train/<class>/`` and ``valid/<class>/``; an optional ``cat_to_name.json`` gives readable class names.
Photos are decoded once into a uint8 tensor cache, so an epoch costs only the network's own compute.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from tqdm import tqdm

from cim_runtime.data import load_rgb_image
from cim_runtime.zoo.recipes import ClassEntry, Recipe, build_network

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DENSENET_SMALL = {"growth_rate": 16, "block_config": [4, 8, 8], "num_init_features": 32, "bn_size": 4}


def sorted_class_folders(split_dir: Path) -> list[str]:
    """List class folders, numerically when every name is a number (Oxford Flowers uses 1..102)."""
    names = [p.name for p in split_dir.iterdir() if p.is_dir()]
    if all(name.isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def decode_split(split_dir: Path, folders: list[str], side_px: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every photo of a split to a square uint8 tensor of ``side_px`` (short-side resize, centre crop)."""
    prepare = v2.Compose([v2.PILToTensor(), v2.Resize(side_px, antialias=True), v2.CenterCrop(side_px)])
    images, labels = [], []
    files = [(path, label) for label, folder in enumerate(folders) for path in sorted((split_dir / folder).glob("*.jpg"))]
    for path, label in tqdm(files, desc=f"decode {split_dir.name}", unit="img"):
        images.append(prepare(load_rgb_image(str(path))))
        labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def augment(batch_u8: torch.Tensor, size_px: int, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop (50-100 % of the side) and horizontal flip, one draw per image."""
    out = torch.empty(batch_u8.shape[0], 3, size_px, size_px)
    side = batch_u8.shape[-1]
    for i, image in enumerate(batch_u8):
        crop = int(torch.randint(side // 2, side + 1, (1,), generator=generator))
        top, left = (int(v) for v in torch.randint(0, side - crop + 1, (2,), generator=generator))
        patch = image[:, top : top + crop, left : left + crop].float().unsqueeze(0) / 255.0
        patch = F.interpolate(patch, size=(size_px, size_px), mode="bilinear", antialias=True, align_corners=False)[0]
        if torch.rand(1, generator=generator) < 0.5:
            patch = patch.flip(-1)
        out[i] = patch
    return out


def normalize(batch: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (batch - mean) / std


def evaluate(network: torch.nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, size_px: int) -> float:
    """Top-1 accuracy on centre crops of the cached validation tensors."""
    network.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), 256):
            batch = v2.functional.center_crop(images_u8[start : start + 256], [size_px, size_px]).float() / 255.0
            correct += (network(normalize(batch)).argmax(1) == labels[start : start + 256]).sum().item()
    return correct / len(labels)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True, help="folder with train/ and valid/ class folders")
    parser.add_argument("--output", type=Path, required=True, help="checkpoint folder to write")
    parser.add_argument("--name", default="flowers102-densenet-small", help="recipe name")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate")
    parser.add_argument("--input-size", type=int, default=64, help="network input side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    resize_px = round(args.input_size * 8 / 7)

    folders = sorted_class_folders(args.data_root / "train")
    names_file = args.data_root / "cat_to_name.json"
    names = json.loads(names_file.read_text()) if names_file.is_file() else {}
    classes = [ClassEntry(folder=f, name=names.get(f, f)) for f in folders]
    recipe = Recipe(
        name=args.name, builder="densenet", builder_kwargs=dict(DENSENET_SMALL),
        input_size_px=args.input_size, resize_px=resize_px,
        normalize_mean=IMAGENET_MEAN, normalize_std=IMAGENET_STD, classes=classes,
    )
    train_x, train_y = decode_split(args.data_root / "train", folders, resize_px)
    valid_x, valid_y = decode_split(args.data_root / "valid", folders, resize_px)

    network = build_network(recipe)
    optimizer = torch.optim.SGD(network.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = (len(train_y) + args.batch_size - 1) // args.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch)
    args.output.mkdir(parents=True, exist_ok=True)
    log_rows = []
    started = time.monotonic()
    for epoch in range(1, args.epochs + 1):
        network.train()
        order = torch.randperm(len(train_y), generator=generator)
        losses = []
        for start in tqdm(range(0, len(order), args.batch_size), desc=f"epoch {epoch}/{args.epochs}", leave=False):
            index = order[start : start + args.batch_size]
            batch = normalize(augment(train_x[index], args.input_size, generator))
            loss = F.cross_entropy(network(batch), train_y[index], label_smoothing=0.1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        accuracy = evaluate(network, valid_x, valid_y, args.input_size)
        log_rows.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "valid_top1": accuracy})
        print(f"epoch {epoch}: loss {np.mean(losses):.3f}, valid top-1 {accuracy:.4f}", flush=True)

    torch.save(network.state_dict(), args.output / recipe.weights_file)
    recipe.training = {
        "command": "python -m cim_runtime.zoo.train " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "dataset": "Oxford 102 Flowers, ImageFolder train/ split", "train_images": int(len(train_y)),
        "epochs": args.epochs, "batch_size": args.batch_size, "peak_lr": args.lr, "seed": args.seed,
        "train_time_s": round(time.monotonic() - started, 1),
    }
    recipe.digital_accuracy = {"split": "valid", "images": int(len(valid_y)), "top1": log_rows[-1]["valid_top1"]}
    (args.output / "recipe.json").write_text(recipe.to_json() + "\n")
    with open(args.output / "training_log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(log_rows[0]))
        writer.writeheader()
        writer.writerows(log_rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
