"""The demo's metrics history as another Parquet reader sees it: pyarrow reads the parts and the
merged files of both tables, with the columns and types shardflow documents, and the same rows."""
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

history = sys.argv[1]
want = {
    "steps": {"run": pa.string(), "step": pa.int64(), "rank": pa.string(),
              "dataset": pa.string(), "metric": pa.string(), "stat": pa.string(),
              "value": pa.float64(), "wall_time": pa.timestamp("ms", tz="UTC")},
    "samples": {"run": pa.string(), "step": pa.int64(), "rank": pa.int64(),
                "dataset": pa.string(), "sample": pa.int64(), "epoch": pa.int64(),
                "name": pa.string(), "value": pa.float64(), "status": pa.string()},
}
for table, columns in want.items():
    parts = ds.dataset(f"{history}/{table}", format="parquet").to_table()
    merged = pq.read_table(f"{history}/{table}.parquet")
    got = {f.name: f.type for f in parts.schema}
    assert got == columns, f"{table}: {got}"
    assert parts.num_rows > 0, table
    key = [(c, "ascending") for c in columns if c != "wall_time"]
    assert parts.sort_by(key).equals(merged.sort_by(key)), f"{table}: parts != merged"
    print(f"pyarrow {pa.__version__}: {table}: {parts.num_rows} rows, parts == merged")
steps = pq.read_table(f"{history}/steps.parquet").to_pylist()
assert all(r["rank"] == "all" for r in steps), "the demo reduces over its ranks"
assert sorted({r["step"] for r in steps}) == list(range(50, 401, 50)), "metrics every 50 steps"
