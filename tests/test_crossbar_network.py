"""Line voltages and currents of a crossbar with driven, grounded and floating lines."""

from __future__ import annotations

import numpy as np
import pytest

from cim_runtime.driver.crossbar_network import line_currents, line_voltages

NAN = np.nan


def test_sneak_path_through_three_cells():
    # 1 S cells. Row 0 at 1 V and column 0 at 0 V; row 1 and column 1 float. Besides the read cell,
    # current takes the path row 0 -> column 1 -> row 1 -> column 0, three cells in series.
    conductance_s = np.ones((2, 2))
    row_a, col_a = line_currents(conductance_s, np.array([1.0, NAN]), np.array([0.0, NAN]))
    assert row_a[0] == pytest.approx(1 + 1 / 3, rel=1e-9)
    assert col_a[0] == pytest.approx(-(1 + 1 / 3), rel=1e-9)
    assert row_a[1] == pytest.approx(0, abs=1e-9)


def test_grounded_lines_leave_only_the_read_cell():
    rng = np.random.default_rng(0)
    conductance_s = rng.uniform(1e-3, 3e-3, (5, 4))
    row_v = np.array([0.1, 0, 0, 0, 0])
    col_v = np.zeros(4)
    row_a, col_a = line_currents(conductance_s, row_v, col_v)
    np.testing.assert_allclose(-col_a, 0.1 * conductance_s[0], rtol=1e-12)
    assert row_a[0] == pytest.approx(0.1 * conductance_s[0].sum(), rel=1e-12)


def test_isolated_floating_lines_rest_at_zero():
    conductance_s = np.zeros((2, 2))
    conductance_s[0, 0] = 1.0
    rows_v, cols_v = line_voltages(conductance_s, np.array([1.0, NAN]), np.array([NAN, NAN]))
    assert rows_v[1] == 0.0
    assert cols_v[1] == 0.0
    # Column 0 touches only row 0, so it follows it.
    assert cols_v[0] == pytest.approx(1.0, rel=1e-9)
