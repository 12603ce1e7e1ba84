"""The one loader of ``data_contracts/``: Parquet table schemas and expectation suites."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import pyarrow as pa

_SCALAR_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "bool": pa.bool_(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "date32": pa.date32(),
}
_TIMESTAMP = re.compile(r"timestamp\[(?P<unit>s|ms|us|ns)(?:,\s*(?P<tz>[^\]]+))?\]")
_LIST = re.compile(r"list<(?P<inner>.+)>")


@dataclass(frozen=True)
class TableContract:
    """A table's reviewed schema and the columns it is Hive-partitioned by."""

    name: str
    schema: pa.Schema
    partitioning: tuple[str, ...]

    @property
    def file_schema(self) -> pa.Schema:
        """The columns stored inside each Parquet file (partition columns live in the path)."""
        return pa.schema([f for f in self.schema if f.name not in self.partitioning])

    @property
    def partition_schema(self) -> pa.Schema:
        return pa.schema([self.schema.field(name) for name in self.partitioning])

    def integer_range(self, column: str) -> tuple[int, int]:
        """The smallest and the largest value integer column ``column`` can hold."""
        kind = self.schema.field(column).type
        if not pa.types.is_integer(kind):
            raise ValueError(f"Expected an integer column, but {self.name}.{column} is {kind}")
        bounds = np.iinfo(kind.to_pandas_dtype())
        return int(bounds.min), int(bounds.max)

    def conform(self, table: pa.Table, *, files_only: bool = False) -> pa.Table:
        """``table`` with exactly the contract's columns, in order and type, or a clear error."""
        target = self.file_schema if files_only else self.schema
        missing = [name for name in target.names if name not in table.column_names]
        if missing:
            raise ValueError(
                f"Expected table {self.name!r} to have columns {missing}, "
                f"but got only {table.column_names}"
            )
        columns = [table.column(name).cast(target.field(name).type) for name in target.names]
        conformed = pa.Table.from_arrays(columns, schema=target)
        conformed.validate(full=True)
        for field in target:
            if not field.nullable and conformed.column(field.name).null_count:
                raise ValueError(
                    f"Expected no nulls in {self.name}.{field.name}, but got "
                    f"{conformed.column(field.name).null_count}"
                )
        return conformed


def parse_type(text: str) -> pa.DataType:
    """``"int64"``, ``"timestamp[us, UTC]"``, ``"list<float32>"`` → the Arrow type."""
    text = text.strip()
    if text in _SCALAR_TYPES:
        return _SCALAR_TYPES[text]
    if match := _TIMESTAMP.fullmatch(text):
        return pa.timestamp(match["unit"], tz=match["tz"])
    if match := _LIST.fullmatch(text):
        return pa.list_(parse_type(match["inner"]))
    raise ValueError(f"Expected a known column type, but got {text!r}")


def _read_json(*parts: str) -> dict[str, Any]:
    node = resources.files("data_contracts").joinpath(*parts)
    if not node.is_file():
        raise FileNotFoundError(f"Expected contract file data_contracts/{'/'.join(parts)}")
    return json.loads(node.read_text(encoding="utf-8"))


def contract_names(kind: str) -> list[str]:
    """Names of every contract of a kind (``schemas`` or ``suites``)."""
    folder = resources.files("data_contracts").joinpath(kind)
    return sorted(
        n.name.removesuffix(".json") for n in folder.iterdir() if n.name.endswith(".json")
    )


@cache
def table_contract(name: str) -> TableContract:
    """The reviewed schema of table ``name`` (``data_contracts/schemas/<name>.json``)."""
    spec = _read_json("schemas", f"{name}.json")
    fields = [
        pa.field(
            column["name"],
            parse_type(column["type"]),
            nullable=column.get("nullable", True),
            metadata={"description": column.get("description", "")},
        )
        for column in spec["columns"]
    ]
    schema = pa.schema(fields, metadata={"description": spec.get("description", "")})
    partitioning = tuple(spec.get("partitioning", ()))
    unknown = [p for p in partitioning if p not in schema.names]
    if unknown:
        raise ValueError(f"Expected partition columns {unknown} among the columns of {name}")
    return TableContract(name=name, schema=schema, partitioning=partitioning)


def expectation_suite(name: str) -> dict[str, Any]:
    """The expectation suite ``name`` as its JSON document (GX's ``to_json_dict`` shape).

    Every expectation must carry ``meta.code`` and ``meta.max_failed_percent``: the code is how
    quarantine rows and reports name it, the threshold is reviewed data, not code.
    """
    suite = _read_json("suites", f"{name}.json")
    codes = set()
    for expectation in suite["expectations"]:
        meta = expectation.get("meta", {})
        code, threshold = meta.get("code"), meta.get("max_failed_percent")
        if not code or not isinstance(threshold, int | float) or not 0 <= threshold <= 100:
            raise ValueError(
                f"Expected every expectation of suite {name!r} to have meta.code and "
                f"meta.max_failed_percent in 0..100, but got {meta!r}"
            )
        if code in codes:
            raise ValueError(f"Expected unique expectation codes in {name!r}, but {code} repeats")
        codes.add(code)
    return suite
