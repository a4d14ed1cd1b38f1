"""Each training worker's share of the data, the same on every run and restart."""

from __future__ import annotations

import ray
from ray.train import DataConfig


class FixedShards(DataConfig):
    """Rank i trains on shard i: the same rows in the same order on every run and restart.

    Ray Train's default `streaming_split` hands each block to whichever worker asks first,
    so two runs train on different shards. Here the datasets are materialized in input
    order (`preserve_order`) and cut by `Dataset.split` before the workers start: the cut
    runs Ray tasks, which would wait forever for the CPUs the workers hold. Training shards
    are equal (DDP steps in lockstep); evaluation shards keep every row. No locality hints:
    on a cluster, a worker may read its shard from another node.

    The datasets named in `stream` are not materialized: Ray Train's `streaming_split`
    (equal rows per worker, locality hints) runs them while the workers train.
    """

    def __init__(self, datasets: dict[str, ray.data.Dataset], world_size: int, stream: tuple[str, ...] = ()):
        super().__init__(datasets_to_split=list(stream))
        self.shards = {name: ds.split(world_size, equal=name == "train") for name, ds in datasets.items()
                       if name not in stream}
        for parts in self.shards.values():
            for part in parts:  # reading a materialized shard: no progress bar per epoch in the log
                part.context.enable_progress_bars = False

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        streamed = {name: ds for name, ds in datasets.items() if name not in self.shards}
        shards = super().configure(streamed, world_size, worker_handles, worker_node_ids, **kwargs)
        return [{**shards[rank], **{name: self.shards[name][rank].iterator() for name in self.shards}}
                for rank in range(world_size)]
