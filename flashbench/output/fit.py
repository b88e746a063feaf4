"""Tables that fit the terminal they are printed in: whole, split into blocks, or one row per backend; never a cut number.

A ``Grid`` is a table described as data: key columns (the case: repeated in every block) and
groups of value columns (one group per backend, or one unnamed group). ``fit`` turns it into
the Rich tables to print:

* piped or redirected output: one table, as wide as it needs (Rich then never squeezes it);
* in a terminal, the whole table when it fits;
* else blocks of groups, each block repeating the key columns, when each block still holds
  two or more groups (or there are only two);
* else, when every group has the same columns (backends: ms, TFLOP/s, ...), the long layout:
  one row per case and group, the group's name in a column of its own;
* else blocks of single columns.

Only columns marked ``fold`` (free text such as an error message or a description) may wrap
onto more lines; numbers and headers are kept whole.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import Literal, Sequence

from rich.console import Console
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

__all__ = ["Column", "Grid", "data_console", "fit", "print_grid"]

Cell = str | Text


@dataclass
class Column:
    header: str
    cells: list[Cell]
    justify: Literal["left", "right"] = "right"
    style: str = ""
    fold: bool = False  # free text that may wrap; everything else stays on one line


@dataclass
class Grid:
    title: str
    keys: list[Column]
    groups: list[tuple[str, list[Column]]]  # (group name, its columns); "" for no name
    caption: str = ""
    group_label: str = "backend"  # the column that names the group in the long layout
    show_header: bool = True
    breaks: frozenset[int] = frozenset()  # rows after which a rule separates cases
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        lengths = {len(c.cells) for c in self.columns()}
        if len(lengths) > 1:
            raise ValueError(f"columns of unequal length: {sorted(lengths)}")
        self.rows = lengths.pop() if lengths else 0

    def columns(self) -> list[Column]:
        return [*self.keys, *(c for _, cols in self.groups for c in cols)]


def data_console() -> Console:
    """The console for data on stdout: the terminal's width in a terminal, unbounded when piped."""
    return Console() if sys.stdout.isatty() else Console(width=100_000)


def _header(group: str, column: Column) -> str:
    return f"{group}\n{column.header}" if group else column.header


def _table(title: str, caption: str, columns: Sequence[tuple[str, Column]], rows: int,
           show_header: bool = True, breaks: frozenset[int] = frozenset()) -> Table:
    table = Table(title=title or None, caption=caption or None, title_justify="left",
                  caption_justify="left", show_header=show_header)
    for group, col in columns:
        table.add_column(_header(group, col), justify=col.justify, style=col.style or None,
                         no_wrap=not col.fold, overflow="fold")
    for i in range(rows):
        table.add_row(*(col.cells[i] for _, col in columns), end_section=i in breaks)
    return table


def _text_width(cell: Cell, fold: bool) -> int:
    """Columns a cell needs: all of it on one line, or its longest word when it may fold."""
    lines = str(cell).splitlines() or [""]
    if fold:
        return max((cell_len(w) for line in lines for w in line.split()), default=0)
    return max(cell_len(line) for line in lines)


def _width(columns: Sequence[tuple[str, Column]]) -> int:
    """The narrowest width at which ``_table`` shows these columns without cutting a cell:
    each column as wide as its widest header line and cell (longest word for fold columns),
    plus one space of padding either side and a border between and around the columns."""
    inner = sum(max([_text_width(line, c.fold) for line in _header(g, c).splitlines()]
                    + [_text_width(x, c.fold) for x in c.cells]) + 2 for g, c in columns)
    return inner + len(columns) + 1


def _keyed(grid: Grid, groups: Sequence[tuple[str, list[Column]]]) -> list[tuple[str, Column]]:
    return [("", k) for k in grid.keys] + [(g, c) for g, cols in groups for c in cols]


def _blocks(grid: Grid, units: list[tuple[str, list[Column]]],
            width: int) -> list[list[tuple[str, list[Column]]]] | None:
    """Units packed greedily into blocks that fit beside the key columns; None if one cannot."""
    blocks: list[list[tuple[str, list[Column]]]] = []
    current: list[tuple[str, list[Column]]] = []
    for unit in units:
        trial = current + [unit]
        if _width(_keyed(grid, trial)) <= width:
            current = trial
            continue
        if not current:
            return None
        blocks.append(current)
        current = [unit]
        if _width(_keyed(grid, current)) > width:
            return None
    if current:
        blocks.append(current)
    return blocks


def _balanced(grid: Grid, blocks: list[list[tuple[str, list[Column]]]] | None,
              width: int) -> list[list[tuple[str, list[Column]]]] | None:
    """The same number of blocks, their sizes evened out (3 3 1 becomes 3 2 2) when that fits."""
    if blocks is None or len(blocks) < 2:
        return blocks
    units = [u for b in blocks for u in b]
    n, k = len(units), len(blocks)
    sizes = [n // k + (i < n % k) for i in range(k)]
    even = [units[sum(sizes[:i]):sum(sizes[:i + 1])] for i in range(k)]
    if all(_width(_keyed(grid, b)) <= width for b in even):
        return even
    return blocks


def _titled(grid: Grid, blocks: list[list[tuple[str, list[Column]]]]) -> list[Table]:
    tables = []
    for i, block in enumerate(blocks):
        title = grid.title if i == 0 else ""
        if len(blocks) > 1:
            title = f"{title}\n(part {i + 1} of {len(blocks)})".lstrip("\n")
        caption = grid.caption if i == len(blocks) - 1 else ""
        tables.append(_table(title, caption, _keyed(grid, block), grid.rows, grid.show_header,
                             grid.breaks))
    return tables


def long_layout(grid: Grid) -> Grid | None:
    """One row per case and group (None when the groups' columns differ); empty cells dropped."""
    if len(grid.groups) < 2:
        return None
    headers = [c.header for c in grid.groups[0][1]]
    if any([c.header for c in cols] != headers for _, cols in grid.groups):
        return None
    keys = [replace(k, cells=[]) for k in grid.keys]
    label = Column(grid.group_label, [], justify="left")
    values = [replace(c, cells=[]) for c in grid.groups[0][1]]
    breaks = set()
    for i in range(grid.rows):
        for name, cols in grid.groups:
            cells = [c.cells[i] for c in cols]
            if not any(str(c) for c in cells):
                continue
            for k, src in zip(keys, grid.keys):
                k.cells.append(src.cells[i])
            label.cells.append(name)
            for v, cell in zip(values, cells):
                v.cells.append(cell)
        if label.cells:
            breaks.add(len(label.cells) - 1)
    breaks.discard(len(label.cells) - 1)
    return Grid(grid.title, [*keys, label], [("", values)], grid.caption, grid.group_label,
                grid.show_header, frozenset(breaks))


def merged_keys(grid: Grid) -> Grid:
    """The key columns as one column of text that may wrap (``1024 128 causal``)."""
    if len(grid.keys) < 2:
        return grid
    cells = [" ".join(str(k.cells[i]) for k in grid.keys) for i in range(grid.rows)]
    key = Column(" ".join(k.header for k in grid.keys), cells, justify="left", fold=True)
    return replace(grid, keys=[key])


def _fits(grid: Grid, width: int) -> bool:
    return _width(_keyed(grid, grid.groups)) <= width


def fit(grid: Grid, console: Console) -> list[Table]:
    """The tables that show ``grid`` on ``console`` without cutting a number or a header."""
    whole = _table(grid.title, grid.caption, _keyed(grid, grid.groups), grid.rows,
                   grid.show_header, grid.breaks)
    width = console.width
    if not console.is_terminal or _fits(grid, width):
        return [whole]
    blocks = _balanced(grid, _blocks(grid, grid.groups, width), width)
    if blocks is not None and (len(grid.groups) <= 2 or all(len(b) >= 2 for b in blocks)):
        return _titled(grid, blocks)
    long = long_layout(grid)
    if long is not None:
        # One row per case and backend; its case columns merged into one if it is too wide.
        if not _fits(long, width):
            long = long_layout(merged_keys(grid))
        return fit(long, console)
    singles = [(name, [c]) for name, cols in grid.groups for c in cols]
    blocks = _blocks(grid, singles, width)
    # Narrower than one column beside the keys: print it whole and let the terminal wrap it.
    return _titled(grid, blocks) if blocks is not None else [whole]


def print_grid(grid: Grid, console: Console | None = None) -> None:
    console = console or data_console()
    for table in fit(grid, console):
        console.print(table)
