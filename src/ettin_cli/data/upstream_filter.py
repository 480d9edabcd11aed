"""The intended rows of `lightonai/embeddings-pre-training`: `drop == False` and `duplicate` null.

Every config of that dataset carries two flags (RECIPE.md, "Upstream sources"): `drop` (bool, the row failed
the upstream filtering) and `duplicate` (nullable int, the row repeats an earlier one). The intended rows are
those with `drop == False` and no `duplicate`, and a cap is a sample of those, so the filter must come before
the cap and before the held-out tail.

`wrap(reader)` puts a `FilteredReader` around a `mixing.SourceReader` whose source has either column: it
presents the kept rows as a contiguous row space (row `i` = the `i`-th kept row), so `build_mix`'s cap
sampling, hold-out tail and row ranges work on kept rows unchanged. A first pass reads only the two flag
columns into a one-byte-per-row mask (100 MB for 100M rows; the texts are never read for it); kept-row numbers
map to source rows through per-block counts. A row with a null `drop` is not kept (only `drop == False` is).
Counts per subset: `dropped_flagged` (drop not False) and `dropped_duplicate` (kept by `drop`, but a duplicate),
so the two add up to all rows removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ettin_cli.core.errors import EttinError

DROP, DUPLICATE = "drop", "duplicate"
BLOCK = 1 << 16


def flag_columns(reader: Any) -> list[str]:
    """The flag columns a source has (none, one or both)."""
    names = reader.inputs[0].column_names
    return [c for c in (DROP, DUPLICATE) if c in names]


def wrap(reader: Any) -> Any:
    """`reader` itself when its source has no flag columns, else the reader of its kept rows."""
    flags = flag_columns(reader)
    return FilteredReader(reader, flags) if flags else reader


class FilteredReader:
    """A `SourceReader` view holding only the intended rows (see the module docstring)."""

    def __init__(self, reader: Any, flags: list[str]):
        self.inner = reader
        self.spec = reader.spec
        self.score_column = reader.score_column
        self.flags = flags
        self._mask: np.ndarray | None = None
        self.dropped_flagged = 0
        self.dropped_duplicate = 0

    @property
    def inputs(self) -> list[Any]:
        return self.inner.inputs

    def _scan(self) -> np.ndarray:
        if self._mask is not None:
            return self._mask
        import pyarrow as pa
        import pyarrow.compute as pc

        where = f"source '{self.spec.name}' ({self.spec.origin})"
        pieces: list[np.ndarray] = []
        offset = 0
        for source in self.inner.inputs:
            last = 0
            for start, table in source.iter_batches(BLOCK, columns=self.flags):
                ok = np.ones(table.num_rows, dtype=bool)
                if DROP in self.flags:
                    column = table.column(DROP)
                    if not pa.types.is_boolean(column.type):
                        raise EttinError(f"{where}: column '{DROP}' is {column.type}, not bool")
                    keep = np.asarray(pc.equal(column, False).fill_null(False).to_numpy(zero_copy_only=False))
                    self.dropped_flagged += int((~keep).sum())
                    ok &= keep
                if DUPLICATE in self.flags:
                    unique = np.asarray(table.column(DUPLICATE).is_null().to_numpy(zero_copy_only=False))
                    self.dropped_duplicate += int((ok & ~unique).sum())
                    ok &= unique
                if start + offset != sum(len(p) for p in pieces):
                    raise EttinError(f"{where}: rows out of order while reading the flags")  # pragma: no cover
                pieces.append(ok)
                last = start + table.num_rows
            known = source.num_rows()
            offset += known if known is not None else last
        self._mask = np.concatenate(pieces) if pieces else np.zeros(0, dtype=bool)
        counts = np.add.reduceat(self._mask, np.arange(0, len(self._mask), BLOCK)) if len(self._mask) else []
        self._before = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return self._mask

    @property
    def source_rows(self) -> int:
        """Rows of the source before the filter."""
        return len(self._scan())

    def num_rows(self) -> int:
        """Kept rows: the row space every caller sees."""
        self._scan()
        return int(self._before[-1])

    def _kept_before(self, row: int) -> int:
        """How many kept rows come before source row `row`."""
        mask = self._scan()
        block = row // BLOCK
        return int(self._before[block] + mask[block * BLOCK:row].sum())

    def _source_row(self, kept: int) -> int:
        """The source row of kept row `kept` (the source's length when `kept` is past the end)."""
        mask = self._scan()
        if kept >= self._before[-1]:
            return len(mask)
        block = int(np.searchsorted(self._before, kept, side="right")) - 1
        local = np.flatnonzero(mask[block * BLOCK:(block + 1) * BLOCK])
        return block * BLOCK + int(local[kept - self._before[block]])

    def iter_batches(self, wanted: list[tuple[int, int]] | None = None) -> Iterator[tuple[int, Any]]:
        """`(first kept row, table of kept rows)`: the inner batches less the filtered rows."""
        import pyarrow as pa

        mask = self._scan()
        inner_wanted = None
        if wanted is not None:
            inner_wanted = [(self._source_row(a), self._source_row(b - 1) + 1) for a, b in wanted if b > a]
        for start, table in self.inner.iter_batches(wanted=inner_wanted):
            kept = table.filter(pa.array(mask[start:start + table.num_rows], type=pa.bool_()))
            if kept.num_rows:
                yield self._kept_before(start), kept


def annotate(report: Any, reader: Any) -> None:
    """Put the filter's counts (and the unfiltered row count) on a subset's report."""
    if isinstance(reader, FilteredReader):
        report.source_rows = reader.source_rows
        report.dropped_flagged = reader.dropped_flagged
        report.dropped_duplicate = reader.dropped_duplicate
