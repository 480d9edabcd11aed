"""Options every sharded step shares (`score`, `select`, `mine`, `mix`), declared once as `Annotated` types.

A command writes `verify: options.Verify = False` instead of repeating the flag, its help and its environment
variable. `ETTIN_VERIFY=1` is read here, at the command line's edge, as the default of `--verify`; the library
functions take `verify` as an argument.
"""

from __future__ import annotations

from typing import Annotated

import typer

Verify = Annotated[bool, typer.Option(
    "--verify", envvar="ETTIN_VERIFY", show_envvar=False,
    help="Hash every finished shard (SHA-256) before reusing it; by default its record and size are checked "
         "(or set ETTIN_VERIFY=1).")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace the output of a different configuration (finished shards of this same run are "
                        "always kept).")]
NumShards = Annotated[int | None, typer.Option(
    "--num-shards", help="Job arrays: number of workers (with --shard-index); overrides torchrun's WORLD_SIZE.")]
ShardIndex = Annotated[int | None, typer.Option(
    "--shard-index", help="Job arrays: this worker's index in [0, --num-shards).")]
