"""Ray's own driver memory per block: a zero-CPU read -> actor map -> zero-CPU write that does
nothing else, at B and 4B blocks of 1,024 rows (the shape of `reviewlm score`'s pipeline).

    .venv/bin/python bench/driver_blocks.py [--blocks 245]

Each size runs in a fresh process with its own Ray (2 CPUs); prints the driver's private
memory (RssAnon) after `ray.init` and after the write.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pyarrow as pa


def rss_anon_mb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("RssAnon"))


def one(blocks: int) -> None:
    import ray
    from ray.data import ActorPoolStrategy
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasink, Datasource, ReadTask

    def read(i):
        yield pa.table({"x": range(i * 1024, (i + 1) * 1024)})

    class Source(Datasource):
        def estimate_inmemory_data_size(self):
            return None

        def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
            meta = BlockMetadata(num_rows=1024, size_bytes=None, exec_stats=None, input_files=None)
            return [ReadTask(lambda i=i: read(i), meta) for i in range(blocks)]

    class Sink(Datasink):
        def write(self, blocks, ctx):
            for _ in blocks:
                pass

        def on_write_complete(self, result):
            pass

    class Same:
        def __call__(self, batch):
            return batch

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    start = rss_anon_mb()
    ds = ray.data.read_datasource(Source(), num_cpus=0, concurrency=2)
    ds = ds.map_batches(Same, compute=ActorPoolStrategy(size=2), batch_size=1024)
    ds.write_datasink(Sink(), ray_remote_args={"num_cpus": 0})
    print(f"{blocks:>7,} blocks: driver {start} MB after ray.init, {rss_anon_mb()} MB after the write", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=245)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args.one)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    for blocks in (args.blocks, 4 * args.blocks):
        subprocess.run([sys.executable, __file__, "--one", str(blocks)], env=env, check=True, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
