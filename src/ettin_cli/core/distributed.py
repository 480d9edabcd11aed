"""Where this process sits in a torchrun / job-array launch, and which shards it owns.

Work is split without coordination, the datatrove way: shard `i` belongs to rank `i % world_size`. Every rank
computes the same assignment from the same inputs, so no process talks to another to know what to do, and a
rerun (with any world size) skips shards that already carry a valid completion record.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ettin_cli.core.errors import EttinError


@dataclass(frozen=True)
class Rank:
    """This process's place among `world_size` workers."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_rank(num_shards: int | None = None, shard_index: int | None = None) -> Rank:
    """The rank of this process: explicit `--num-shards/--shard-index` (job arrays) win over torchrun's env."""
    if (num_shards is None) != (shard_index is None):
        raise EttinError("--num-shards and --shard-index go together: give both or neither")
    if num_shards is not None and shard_index is not None:
        if num_shards < 1 or not 0 <= shard_index < num_shards:
            raise EttinError(f"--shard-index must be in [0, {num_shards}), got {shard_index}")
        return Rank(rank=shard_index, world_size=num_shards, local_rank=0)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return Rank(rank=rank, world_size=world, local_rank=local)


def owned(index: int, rank: Rank) -> bool:
    """True when work item `index` (a shard, a file) belongs to this rank."""
    return index % rank.world_size == rank.rank
