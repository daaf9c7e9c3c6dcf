"""Tables that a map task writes cut into partitions and a reduce task reads back one partition at a
time: the shuffle that lets Ray tasks hand per-document rows to each other through the work store,
so that the driver holds file names and counts, never the rows (MapReduce's shape; NeMo Curator
shuffles its LSH buckets the same way).

One file per writer holds every partition: a JSON header (column dtypes, each partition's row
range) and then each column's rows sorted by partition, so a reader of partition ``p`` seeks to its
slice of every column and reads nothing else (on object storage: one ranged read per column). A
column is a numpy array (one value per row) or a list of 1-D arrays (a ragged column: one array per
row, stored flat). Tables live wherever ``stages.core.storage`` reaches (a local folder or S3), and
are written under a temporary name and renamed, so a retried or killed writer never leaves half a
file to read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import numpy as np

from stages.core import storage

Column = Union[np.ndarray, list]
SUFFIX = ".part"
_MAGIC = b"LMFPART1"


def write_table(path: str | Path, partition: np.ndarray, partitions: int, columns: dict[str, Column]) -> None:
    """Write rows to ``path``, row ``i`` belonging to partition ``partition[i]`` (0..partitions-1)."""
    partition = np.asarray(partition, dtype=np.int64)
    order = np.argsort(partition, kind="stable")
    counts = np.bincount(partition, minlength=partitions) if len(partition) else np.zeros(partitions, np.int64)
    header: dict = {"partitions": partitions, "bounds": np.concatenate([[0], np.cumsum(counts)]).tolist(),
                    "columns": []}
    blobs: list[bytes] = []
    offset = 0
    for name, values in columns.items():
        if isinstance(values, list):  # ragged: one 1-D array per row
            lengths = np.array([len(v) for v in values], dtype=np.int64)
            sorted_values = [values[i] for i in order]
            flat = np.concatenate(sorted_values) if sorted_values else np.empty(0, np.uint64)
            value_bounds = np.concatenate([[0], np.cumsum(np.bincount(partition, weights=lengths, minlength=partitions)
                                                          if len(partition) else np.zeros(partitions))]).astype(np.int64)
            entries = [("lengths", lengths[order]), ("values", flat)]
            spec = {"name": name, "ragged": True, "value_bounds": value_bounds.tolist()}
        else:
            values = np.asarray(values)
            if len(values) != len(partition):
                raise ValueError(f"column {name!r} has {len(values)} rows, the partition array {len(partition)}")
            entries = [("values", values[order])]
            spec = {"name": name, "ragged": False}
        for part, array in entries:
            array = np.ascontiguousarray(array)
            spec[part] = {"dtype": array.dtype.str, "tail": list(array.shape[1:]), "offset": offset}
            blob = array.tobytes()
            blobs.append(blob)
            offset += len(blob)
        header["columns"].append(spec)
    head = json.dumps(header).encode("utf-8")
    with storage.open_output(path, text=False) as handle:
        handle.write(_MAGIC + len(head).to_bytes(8, "little") + head)
        for blob in blobs:
            handle.write(blob)


def _read_slice(handle: storage.RangeReader, base: int, spec: dict, start: int, stop: int) -> np.ndarray:
    dtype = np.dtype(spec["dtype"])
    tail = tuple(spec["tail"])
    row_bytes = dtype.itemsize * int(np.prod(tail, dtype=np.int64))
    if stop == start:
        return np.empty((0, *tail), dtype=dtype)
    data = handle.read_at(base + spec["offset"] + start * row_bytes, (stop - start) * row_bytes)
    return np.frombuffer(data, dtype=dtype).reshape((stop - start, *tail)).copy()


def read_partition(path: str | Path, p: int) -> dict[str, Column]:
    """Partition ``p`` of one file: {column: array, or list of arrays for a ragged column}."""
    with storage.RangeReader(path) as handle:
        if handle.read_at(0, len(_MAGIC)) != _MAGIC:
            raise ValueError(f"{path} is not a partitioned table")
        size = int.from_bytes(handle.read_at(len(_MAGIC), 8), "little")
        header = json.loads(handle.read_at(len(_MAGIC) + 8, size))
        base = len(_MAGIC) + 8 + size
        start, stop = header["bounds"][p], header["bounds"][p + 1]
        table: dict[str, Column] = {}
        for spec in header["columns"]:
            if spec["ragged"]:
                lengths = _read_slice(handle, base, spec["lengths"], start, stop)
                v0, v1 = spec["value_bounds"][p], spec["value_bounds"][p + 1]
                flat = _read_slice(handle, base, spec["values"], v0, v1)
                table[spec["name"]] = np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
            else:
                table[spec["name"]] = _read_slice(handle, base, spec["values"], start, stop)
    return table


def read_partition_of_all(directory: str | Path, p: int) -> dict[str, Column]:
    """Partition ``p`` of every table file in ``directory``, concatenated in file-name order ({} if none)."""
    files = storage.list_files(directory, SUFFIX)
    parts = [read_partition(f, p) for f in files]
    if not parts:
        return {}
    table: dict[str, Column] = {}
    for name, first in parts[0].items():
        if isinstance(first, list):
            table[name] = [array for part in parts for array in part[name]]
        else:
            table[name] = np.concatenate([part[name] for part in parts])
    return table


def table_path(directory: str | Path, writer: str) -> str:
    return storage.join(directory, f"{writer}{SUFFIX}")


def remove(directory: str | Path) -> None:
    storage.remove_tree(directory)
