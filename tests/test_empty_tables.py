"""Every documented table exists from the first run that decides it, empty when that run found
nothing: after a night that flagged, quarantined and replayed nothing, each table the analysts'
page names opens with pandas, pyarrow's dataset, DuckDB and polars, with its contract's columns
and types, and zero rows where nothing happened."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from bincount.core.contracts import TableContract, table_contract
from bincount.core.storage import Location
from bincount.core.tables import MANIFESTS, QUARANTINE, part_names
from bincount.data.ingest import ingest_metadata
from bincount.data.manifest import LATEST_MANIFEST
from bincount.nightly.scoring import score_images
from bincount.review.queue import queue_reviews
from bincount.review.ranking import ReviewPolicy
from bincount.testing.s3server import create_public_bucket, s3_client, upload_tree

REPO = Path(__file__).resolve().parents[1]
# Evidence no bin can pass: the night is judged and its queue holds nobody.
FLAGS_NOTHING = ReviewPolicy(budget_count=0)


def documented_tables() -> list[str]:
    """The tables ``docs/analysts/tables.md`` lists, in its order."""
    page = (REPO / "docs" / "analysts" / "tables.md").read_text(encoding="utf-8")
    return re.findall(r"^\| \[`(\w+)`\]\(", page, flags=re.MULTILINE)


def folder_of(output: Path, table: str) -> Path:
    """Where a table is: its folder, or for the manifest the newest version's."""
    if table == "manifest":
        version = json.loads((output / LATEST_MANIFEST).read_text())["version"]
        return output / MANIFESTS / version
    return output / table


def reference(folder: Path, contract: TableContract) -> pa.Table:
    """The table as its contract types it: the dataset read with the contract's schema and
    partition types imposed, the yardstick each reader below is held to."""
    partitioning = (
        ds.partitioning(contract.partition_schema, flavor="hive") if contract.partitioning else None
    )
    return ds.dataset(
        folder, schema=contract.schema, format="parquet", partitioning=partitioning
    ).to_table()


def check_readers(folder: Path, contract: TableContract) -> tuple[int, list[str]]:
    """Open ``folder`` with the four readers as the docs do; the rows each read (all the same)
    and every way one differs from the contract.

    Every reader puts the partition columns last. DuckDB and polars type them from the path as
    the contract does (a date, a string); pandas and pyarrow's ``partitioning="hive"`` keep the
    path's text (pandas as a category), as they do for a table with rows.
    """
    import duckdb
    import polars as pl

    expected = reference(folder, contract)
    files = contract.file_schema.names
    order = [*files, *contract.partitioning]
    pattern = str(folder / "/".join(["*"] * len(contract.partitioning) + ["*.parquet"]))
    problems: list[str] = []

    def compare(reader: str, got: dict, want: dict) -> None:
        if list(got) != list(want):
            problems.append(f"{reader}: columns {list(got)}, expected {list(want)}")
        for name in want:
            if name in got and str(got[name]) != str(want[name]):
                problems.append(f"{reader}: {name} is {got[name]}, expected {want[name]}")

    frame = pd.read_parquet(folder)
    pandas_types = expected.select(files).to_pandas().dtypes.to_dict()
    pandas_types |= {name: "category" for name in contract.partitioning}
    compare("pandas", frame.dtypes.to_dict(), pandas_types)

    dataset = ds.dataset(folder, format="parquet", partitioning="hive")
    arrow_types = {f.name: _plain(f.type) for f in contract.file_schema}
    arrow_types |= {name: pa.string() for name in contract.partitioning}
    compare("pyarrow", {f.name: _plain(f.type) for f in dataset.schema}, arrow_types)
    table = dataset.to_table()

    relation = duckdb.sql(f"select * from read_parquet('{pattern}', hive_partitioning = true)")
    duck_types = duckdb.from_arrow(expected.select(order))
    compare(
        "duckdb",
        dict(zip(relation.columns, relation.types, strict=True)),
        dict(zip(duck_types.columns, duck_types.types, strict=True)),
    )
    ((duck_rows,),) = duckdb.sql(f"select count(*) from read_parquet('{pattern}')").fetchall()

    lazy = pl.scan_parquet(pattern, hive_partitioning=True)
    compare(
        "polars", dict(lazy.collect_schema()), dict(pl.from_arrow(expected.select(order)).schema)
    )
    polars_rows = lazy.select(pl.len()).collect().item()

    rows = {len(frame), table.num_rows, duck_rows, polars_rows}
    if rows != {expected.num_rows}:
        problems.append(f"rows: the readers read {rows}, the contract's read {expected.num_rows}")
    return expected.num_rows, problems


def _plain(kind: pa.DataType) -> pa.DataType:
    """The type without its list's element name (Parquet calls it ``element``, Arrow ``item``)."""
    return pa.list_(_plain(kind.value_type)) if pa.types.is_list(kind) else kind


def check_tables(output: Path, tables: list[str]) -> dict[str, int]:
    """Each table's rows, after every reader found its contract's columns and types."""
    rows, problems = {}, []
    for table in tables:
        folder = folder_of(output, table)
        if not folder.is_dir():
            problems.append(f"{table}: no folder {folder}")
            continue
        rows[table], found = check_readers(folder, table_contract(table))
        problems += [f"{table}: {problem}" for problem in found]
    assert not problems, "\n".join(problems)
    return rows


def _download(endpoint: str, bucket: str, prefixes: list[str], into: Path) -> None:
    client = s3_client(endpoint)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            if obj["Key"].startswith(tuple(prefixes)):
                target = into / obj["Key"]
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(target))


def test_the_analysts_page_names_a_contract_for_every_table():
    tables = documented_tables()
    assert {"bins", "review_queue", "review_outcomes", "monitoring"} <= set(tables)
    assert all(table_contract(table).name == table for table in tables)


def test_a_night_that_flags_nothing_leaves_every_documented_table_readable(
    prefect_api, settings_env, trained, s3_server, bucket, tmp_path
):
    from flows.score import score

    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    upload_tree(s3_server.endpoint_url, bucket, tmp_path / "bucket")
    create_public_bucket(s3_server.endpoint_url, f"{bucket}-out")
    upload_tree(s3_server.endpoint_url, f"{bucket}-out", tmp_path / "out")
    source, output = f"s3://{bucket}", f"s3://{bucket}-out"

    night = score(source=source, output=output, batch_size=16, review=FLAGS_NOTHING)
    assert night["scored"] == 40 and night["quarantined"] == 0 and night["pending"] == 0
    assert night["needs_review"] == 0 and night["queue"]["judged"] == 40
    # A second night with nothing new ranks nothing and writes no second empty queue.
    again = score(source=source, output=output, review=FLAGS_NOTHING)
    assert again["scored"] == 0 and again["already_scored"] == 40

    tables = documented_tables()
    local = tmp_path / "analyst"
    _download(s3_server.endpoint_url, f"{bucket}-out", [*tables, MANIFESTS], local)
    rows = check_tables(local, tables)
    assert rows["quarantine"] == rows["review_queue"] == rows["review_outcomes"] == 0
    assert rows["manifest"] == rows["scores"] == 40 and rows["bins"] and rows["items"]
    assert rows["monitoring"] == 2  # one row per scoring run
    queue_parts = part_names(Location(str(local)), "review_queue")
    assert queue_parts == {night["queue"]["queue_id"]}
    # Each stage that ran kept nothing out, and says so in its own partition.
    stages = sorted(p.name for p in (local / QUARANTINE).iterdir())
    assert stages == ["stage=images", "stage=ingest", "stage=score", "stage=validate"]


def test_first_runs_that_find_nothing_still_decide_their_tables(trained, tmp_path):
    empty = tmp_path / "empty"
    (empty / "metadata").mkdir(parents=True)
    output = Location(str(tmp_path / "ingested"))
    for _ in range(2):  # a rerun adds no part
        summary = ingest_metadata(Location(str(empty)), output)
        assert (summary.listed, summary.ingested, summary.quarantined) == (0, 0, 0)
        rows = check_tables(Path(output.path()), ["bins", "items", "quarantine"])
        assert rows == {"bins": 0, "items": 0, "quarantine": 0}
        assert [len(part_names(output, t)) for t in ("bins", "items", QUARANTINE)] == [1, 1, 1]

    # A champion, and a first night whose prefix matches no photo.
    shutil.copytree(trained / "out", tmp_path / "out")
    output = Location(str(tmp_path / "out"))
    source = Location(str(trained / "bucket"))
    for _ in range(2):
        night = score_images(source, output, prefix="bin-images/none", review=FLAGS_NOTHING)
        assert night.scored == 0
        tables = ["scores", "review_queue", "review_outcomes"]
        rows = check_tables(Path(output.path()), tables)
        assert rows == dict.fromkeys(tables, 0)
        assert [len(part_names(output, t)) for t in tables] == [1, 1, 1]
    # The next night scores its bins beside the empty parts, and its queue is the night's own.
    night = score_images(source, output, review=FLAGS_NOTHING)
    assert night.scored == 40 and night.needs_review == 0
    rows = check_tables(Path(output.path()), ["scores", "review_queue", "review_outcomes"])
    assert rows == {"scores": 40, "review_queue": 0, "review_outcomes": 0}
    assert len(part_names(output, "review_queue")) == 2
    assert queue_reviews(output, FLAGS_NOTHING).queue_id is None  # nothing left to rank
