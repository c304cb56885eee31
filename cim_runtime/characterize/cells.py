"""Selection of the cells a characterization routine measures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cim_runtime.driver import ArrayDriver
from cim_runtime.errors import ConfigError


@dataclass(frozen=True)
class CellSelection:
    """Addresses of the measured cells, all on one array."""

    array: int
    rows: np.ndarray
    cols: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.size)


def select_cells(driver: ArrayDriver, count: int, *, array: int = 0) -> CellSelection:
    """Pick ``count`` cells spread over one array (a strided grid, so neighbours are not all alike)."""
    info = driver.info()
    if not 1 <= count <= info.rows * info.cols:
        raise ConfigError(f"cells={count} is invalid: must be between 1 and {info.rows * info.cols} for a {info.rows}x{info.cols} array")
    flat = np.linspace(0, info.rows * info.cols - 1, count).round().astype(np.int64)
    rows, cols = np.unravel_index(flat, (info.rows, info.cols))
    return CellSelection(array, rows, cols)
