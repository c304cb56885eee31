"""Checkpoints of the simulator's arrays on disk, so simulated hardware outlives the process.

Real arrays keep their conductances when the host program dies. The simulator keeps them in memory,
so a programming run that resumes in a new process would find fresh arrays. With ``sim://?state=DIR``
the programming session asks the simulator for a checkpoint after each step it journals, and a
resumed session restores the checkpoint of its last journaled step. Seeded runs then end in the same
state whether or not they were interrupted.

Layout of ``DIR``:

* ``checkpoint-gNNNNNN.json``: generation, simulator identity, virtual clock, random generator state
  and, for each array changed since the simulator was opened, the generation of its file.
* ``arrays/aNNNN-gNNNNNN.npz``: the mutable per-cell state of one array (conductance, range ends,
  pulse history, wear and stuck flags), written only when the array changed.

The two newest checkpoints are kept, because the step after the last journaled one may have saved
its checkpoint before the process died.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np

from cim_runtime.errors import RESTART_HINT, DataError
from cim_runtime.files import atomic_write, write_json

KEPT_CHECKPOINTS = 2
_CHECKPOINT = re.compile(r"checkpoint-g(\d{6})\.json")


def checkpoint_path(folder: Path, generation: int) -> Path:
    return folder / f"checkpoint-g{generation:06d}.json"


def array_path(folder: Path, array: int, generation: int) -> Path:
    return folder / "arrays" / f"a{array:04d}-g{generation:06d}.npz"


def save(folder: Path, generation: int, meta: dict, array_states: dict[int, dict[str, np.ndarray]], previous: dict[int, int]) -> dict[int, int]:
    """Write the changed arrays and then the checkpoint file; return the array-to-generation map saved."""
    files = dict(previous)
    for array, state in array_states.items():
        atomic_write(array_path(folder, array, generation), lambda temporary, state=state: _save_npz(temporary, state))
        files[array] = generation
    write_json(checkpoint_path(folder, generation), {**meta, "generation": generation, "arrays": {str(a): g for a, g in sorted(files.items())}})
    _remove_old(folder, generation)
    return files


def _save_npz(temporary: str, state: dict[str, np.ndarray]) -> None:
    with open(temporary, "wb") as handle:
        np.savez(handle, **state)


def load(folder: Path, generation: int) -> tuple[dict, dict[int, dict[str, np.ndarray]]]:
    """Read checkpoint ``generation``: its metadata and the saved state of every array it names."""
    path = checkpoint_path(folder, generation)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        files = {int(array): int(saved) for array, saved in meta["arrays"].items()}
    except FileNotFoundError:
        raise DataError(f"simulator checkpoint {path} is missing; the state folder does not belong to this journal, "
                        f"or was deleted: {RESTART_HINT}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"simulator checkpoint {path} is corrupt ({exc}); {RESTART_HINT}") from None
    states = {}
    for array, saved in files.items():
        source = array_path(folder, array, saved)
        try:
            with np.load(source, allow_pickle=False) as data:
                states[array] = {name: data[name] for name in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(f"simulator array file {source} cannot be read ({exc}); {RESTART_HINT}") from None
    return meta, states


def _remove_old(folder: Path, newest: int) -> None:
    """Delete checkpoints older than the kept ones and array files none of the kept ones names."""
    generations = sorted(int(match.group(1)) for path in folder.glob("checkpoint-g*.json") if (match := _CHECKPOINT.fullmatch(path.name)))
    kept = [g for g in generations if g <= newest][-KEPT_CHECKPOINTS:]
    referenced = set()
    for generation in generations:
        path = checkpoint_path(folder, generation)
        if generation not in kept:
            path.unlink(missing_ok=True)
            continue
        try:
            names = json.loads(path.read_text(encoding="utf-8"))["arrays"]
        except (OSError, ValueError, KeyError):
            continue
        referenced.update(array_path(folder, int(array), int(saved)).name for array, saved in names.items())
    for path in (folder / "arrays").glob("a*-g*.npz"):
        if path.name not in referenced:
            path.unlink(missing_ok=True)
