"""Currents of a passive crossbar whose row and column lines are driven, grounded or left floating.

Each cell joins its row line to its column line with a conductance. Lines tied to a source have a
fixed voltage. The voltage of every floating line follows from Kirchhoff's current law, so current
also flows through sneak paths: from a driven row through a cell to a floating column, back through
another cell to a floating row, and on. Wire resistance is left out (see ``analog.ir_drop`` for it).
"""

from __future__ import annotations

import numpy as np

#: Conductance from every line to ground, in siemens. It keeps a floating line that touches no fixed
#: line at 0 V, where its voltage would be undefined. It is far below any cell's conductance.
LEAK_S = 1e-15


def line_voltages(conductance_s: np.ndarray, row_v: np.ndarray, col_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the voltage of every row and column line.

    Args:
        conductance_s: ``(rows, cols)`` cell conductances.
        row_v, col_v: fixed voltage of each line, NaN where the line floats.
    """
    rows, cols = conductance_s.shape
    voltage = np.concatenate([row_v, col_v]).astype(np.float64)
    # Laplacian of the bipartite network: rows are nodes 0..rows-1, columns the nodes after them.
    laplacian = np.zeros((rows + cols, rows + cols))
    laplacian[:rows, rows:] = -conductance_s
    laplacian[rows:, :rows] = -conductance_s.T
    laplacian[np.arange(rows + cols), np.arange(rows + cols)] = np.concatenate([conductance_s.sum(1), conductance_s.sum(0)]) + LEAK_S
    free = np.isnan(voltage)
    if free.any():
        fixed = ~free
        right = -laplacian[np.ix_(free, fixed)] @ voltage[fixed]
        voltage[free] = np.linalg.solve(laplacian[np.ix_(free, free)], right)
    return voltage[:rows], voltage[rows:]


def line_currents(conductance_s: np.ndarray, row_v: np.ndarray, col_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the current that flows from each row line and each column line into the cells, in amperes."""
    rows_v, cols_v = line_voltages(conductance_s, row_v, col_v)
    difference = rows_v[:, None] - cols_v[None, :]
    return (conductance_s * difference).sum(1), -(conductance_s * difference).sum(0)
