"""Cut layer matrices into tiles and place the tiles on the arrays of a crossbar system.

A tile covers a block of one group's weight matrix: ``rows`` matrix rows and ``cols`` matrix columns.
On the array it occupies ``rows`` physical rows and ``2 * cols`` physical columns, because each weight
column becomes a differential pair: physical column ``2j`` is G+ and ``2j + 1`` is G-.
Tiles are placed in shelves (left to right, then a new shelf below, then a new array), so one array can
hold several small tiles.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from cim_runtime.errors import ConfigError
from cim_runtime.mapping.lowering import LayerSpec


@dataclass(frozen=True)
class Tile:
    """One block of a layer matrix and where it sits on the hardware."""

    layer: str
    group: int
    #: First matrix row and number of rows of the block.
    row_start: int
    rows: int
    #: First matrix column and number of columns (weights, not physical columns) of the block.
    col_start: int
    cols: int
    array: int
    #: Physical row and column of the block's top-left cell on its array.
    array_row: int
    array_col: int


@dataclass
class TilePlan:
    """Layers, tile size and tile placement for one network on one crossbar system."""

    array_rows: int
    array_cols: int
    #: Largest tile, in physical rows and physical columns.
    tile_rows: int
    tile_cols: int
    layers: list[LayerSpec]
    tiles: list[Tile] = field(default_factory=list)
    #: Column pairs kept free at the right edge of every array, for moving columns with stuck cells.
    spare_pairs: int = 0

    @property
    def spare_col_start(self) -> int:
        """First physical column of the spare columns on every array."""
        return self.array_cols - 2 * self.spare_pairs

    @property
    def arrays_used(self) -> int:
        return 1 + max((tile.array for tile in self.tiles), default=-1)

    @property
    def cells_used(self) -> int:
        return sum(2 * tile.rows * tile.cols for tile in self.tiles)

    def layer(self, name: str) -> LayerSpec:
        for spec in self.layers:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps(
            {
                "array_rows": self.array_rows, "array_cols": self.array_cols,
                "tile_rows": self.tile_rows, "tile_cols": self.tile_cols,
                "layers": [spec.to_dict() for spec in self.layers],
                "tiles": [asdict(tile) for tile in self.tiles],
                "spare_pairs": self.spare_pairs,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "TilePlan":
        raw = json.loads(text)
        return cls(
            array_rows=raw["array_rows"], array_cols=raw["array_cols"],
            tile_rows=raw["tile_rows"], tile_cols=raw["tile_cols"],
            layers=[LayerSpec.from_dict(spec) for spec in raw["layers"]],
            tiles=[Tile(**tile) for tile in raw["tiles"]],
            spare_pairs=raw.get("spare_pairs", 0),
        )


def check_tile_size(tile_rows: int, tile_cols: int, array_rows: int, array_cols: int) -> None:
    """Raise :class:`ConfigError` unless the tile fits the array and contains whole differential pairs."""
    if tile_rows < 1 or tile_cols < 2:
        raise ConfigError(f"tile {tile_rows}x{tile_cols} is invalid: it needs at least 1 row and 2 columns")
    if tile_cols % 2:
        raise ConfigError(f"tile {tile_rows}x{tile_cols} is invalid: the column count must be even (G+/G- pairs)")
    if tile_rows > array_rows or tile_cols > array_cols:
        raise ConfigError(
            f"tile {tile_rows}x{tile_cols} does not fit the {array_rows}x{array_cols} array: use --tile up to {array_rows}x{array_cols}"
        )


def _cut(spec: LayerSpec, tile_rows: int, weight_cols: int) -> list[tuple[int, int, int, int, int]]:
    """Return (group, row_start, rows, col_start, cols) blocks covering every group's matrix."""
    blocks = []
    for group in range(spec.groups):
        for row_start in range(0, spec.matrix_rows, tile_rows):
            for col_start in range(0, spec.matrix_cols, weight_cols):
                rows = min(tile_rows, spec.matrix_rows - row_start)
                cols = min(weight_cols, spec.matrix_cols - col_start)
                blocks.append((group, row_start, rows, col_start, cols))
    return blocks


def plan_tiles(layers: list[LayerSpec], tile_rows: int, tile_cols: int, array_rows: int, array_cols: int, spare_pairs: int = 0) -> TilePlan:
    """Cut every layer into tiles and place them on arrays, starting at array 0.

    Args:
        spare_pairs: column pairs to keep free at the right edge of every array.
    """
    if not 0 <= 2 * spare_pairs < array_cols:
        raise ConfigError(f"{spare_pairs} spare column pairs do not fit arrays of {array_cols} columns: use 0 to {(array_cols - 1) // 2}")
    usable_cols = array_cols - 2 * spare_pairs
    check_tile_size(tile_rows, tile_cols, array_rows, usable_cols)
    plan = TilePlan(array_rows, array_cols, tile_rows, tile_cols, list(layers), spare_pairs=spare_pairs)
    array_cols = usable_cols
    array, shelf_row, shelf_height, next_col = 0, 0, 0, 0
    for spec in layers:
        for group, row_start, rows, col_start, cols in _cut(spec, tile_rows, tile_cols // 2):
            width = 2 * cols
            if next_col + width > array_cols:
                shelf_row, shelf_height, next_col = shelf_row + shelf_height, 0, 0
            if shelf_row + rows > array_rows:
                array, shelf_row, shelf_height, next_col = array + 1, 0, 0, 0
            plan.tiles.append(Tile(spec.name, group, row_start, rows, col_start, cols, array, shelf_row, next_col))
            next_col += width
            shelf_height = max(shelf_height, rows)
    return plan


@dataclass
class CellTargets:
    """Flat list of every used cell with its address and target conductance."""

    array: np.ndarray
    row: np.ndarray
    col: np.ndarray
    target_s: np.ndarray
    #: Index into the plan's layers of each cell, where the targets come from a plan.
    layer: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.target_s.size)


def _tile_cells(tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """Physical (rows, cols) of a tile's cells, shape (rows, cols, 2) with the pair on the last axis."""
    rows = tile.array_row + np.arange(tile.rows)[:, None, None]
    cols = tile.array_col + 2 * np.arange(tile.cols)[None, :, None] + np.arange(2)[None, None, :]
    return np.broadcast_to(rows, (tile.rows, tile.cols, 2)), np.broadcast_to(cols, (tile.rows, tile.cols, 2))


def cell_targets(plan: TilePlan, pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> CellTargets:
    """Gather the target of every used cell from per-layer (G+, G-) matrices of shape (groups, rows, cols)."""
    arrays, rows, cols, targets, layers = [], [], [], [], []
    layer_index = {spec.name: position for position, spec in enumerate(plan.layers)}
    for tile in plan.tiles:
        positive, negative = pairs[tile.layer]
        block = np.s_[tile.group, tile.row_start : tile.row_start + tile.rows, tile.col_start : tile.col_start + tile.cols]
        tile_rows, tile_cols = _tile_cells(tile)
        # int32 addresses keep the target list of a whole network (tens of millions of cells) small.
        arrays.append(np.full(tile_rows.size, tile.array, dtype=np.int32))
        rows.append(tile_rows.ravel().astype(np.int32))
        cols.append(tile_cols.ravel().astype(np.int32))
        targets.append(np.stack([positive[block], negative[block]], axis=-1).ravel())
        layers.append(np.full(tile_rows.size, layer_index[tile.layer], dtype=np.int16 if len(plan.layers) < 2**15 else np.int32))
    return CellTargets(*(np.concatenate(part) for part in (arrays, rows, cols, targets, layers)))


def gather_pairs(plan: TilePlan, conductance_s: dict[int, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Rebuild per-layer (G+, G-) matrices from whole-array conductance maps keyed by array index."""
    values = [conductance_s[tile.array][_tile_cells(tile)].ravel() for tile in plan.tiles]
    return cells_to_pairs(plan, np.concatenate(values) if values else np.zeros(0))


def cells_to_pairs(plan: TilePlan, values: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Rebuild per-layer (G+, G-) matrices from one value per cell in :func:`cell_targets` order."""
    if values.shape != (plan.cells_used,):
        raise ConfigError(f"expected {plan.cells_used} cell values for this plan, got shape {values.shape}")
    pairs = {}
    for spec in plan.layers:
        shape = (spec.groups, spec.matrix_rows, spec.matrix_cols)
        pairs[spec.name] = (np.full(shape, np.nan), np.full(shape, np.nan))
    start = 0
    for tile in plan.tiles:
        stop = start + 2 * tile.rows * tile.cols
        block = np.s_[tile.group, tile.row_start : tile.row_start + tile.rows, tile.col_start : tile.col_start + tile.cols]
        measured = values[start:stop].reshape(tile.rows, tile.cols, 2)
        pairs[tile.layer][0][block] = measured[..., 0]
        pairs[tile.layer][1][block] = measured[..., 1]
        start = stop
    return pairs


@dataclass(frozen=True)
class Chunk:
    """The tiles of one array: a contiguous range of cells in :func:`cell_targets` order."""

    array: int
    tiles: tuple[int, ...]
    cell_start: int
    cell_stop: int


def array_chunks(plan: TilePlan) -> list[Chunk]:
    """Group the plan's tiles by array, in plan order (the shelf packer fills arrays one after another)."""
    chunks: list[Chunk] = []
    start = 0
    for position, tile in enumerate(plan.tiles):
        stop = start + 2 * tile.rows * tile.cols
        if chunks and chunks[-1].array == tile.array:
            last = chunks[-1]
            chunks[-1] = Chunk(last.array, (*last.tiles, position), last.cell_start, stop)
        else:
            chunks.append(Chunk(tile.array, (position,), start, stop))
        start = stop
    return chunks
