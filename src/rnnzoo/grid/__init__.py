"""Two-dimensional recurrences: the 2-D contract (grid/base.py) and its layers.

    from rnnzoo.grid import create_grid
    layer = create_grid("scan2d", d_model=32, layer="gla", directions=("row", "row_rev"))
    y, state = layer(x)          # x, y: (batch, height, width, d_model)

`scan2d` runs any registered 1-D layer over the grid flattened row-major or column-major,
forwards and backwards, and merges the directions (ViG, ViR); `plstm` is pLSTM's
source-transition-mark recurrence on the grid's DAG; `chimera` the 2-D state space over
time x variates. The registry `rnnzoo.registry.GRID_LAYERS` lists them. docs/2d.md.
"""

from rnnzoo.grid.base import GridLayer, create_grid, register_grid

__all__ = ["GridLayer", "create_grid", "register_grid"]
