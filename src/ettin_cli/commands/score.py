"""`ettin score`: teacher labelling into sharded parquet (thin: parse, validate, call `scoring.run_score`)."""

from __future__ import annotations

from pathlib import Path

import typer

from ettin_cli.commands import options
from ettin_cli.core.errors import EttinError

HELP = (
    "Label (query, document) pairs with a teacher: sharded parquet with a float32 `score` column.\n\n"
    "INPUT is a parquet/jsonl/csv file, a directory of them, or a Hugging Face dataset id (streamed). Every input "
    "column passes through; shards hold contiguous input rows in input order, and DIR/manifest.json records the "
    "teacher, input fingerprint, per-shard checksums, truncation counts and throughput. Rerunning the same "
    "command resumes: finished shards are verified and skipped. Under torchrun every process takes the shards "
    "i % WORLD_SIZE == RANK.\n\n"
    "Examples:\n\n"
    "  ettin score pairs.parquet --teacher mixedbread-ai/mxbai-rerank-large-v2 --output scored/\n\n"
    "  ettin score data/ --teacher ./student --teacher-format cross-encoder --output scored/ --limit 10000\n\n"
    "  ettin score lightonai/embeddings-fine-tuning --config msmarco --teacher TEACHER --output scored/msmarco\n\n"
    "  torchrun --nproc_per_node 8 -m ettin_cli score pairs/ --teacher TEACHER --output scored/\n\n"
    "  ettin score pairs.parquet --teacher Qwen/Qwen3-Reranker-4B --output scored/ --instruction 'Given a "
    "question, retrieve passages that answer it'\n\n"
    "  ettin score pairs.parquet --teacher ./my-judge --teacher-format my-judge.yaml --output scored/\n\n"
    "  ettin score pairs.jsonl --teacher sentence-transformers/all-MiniLM-L6-v2 --output demo/"
)


def register(app: typer.Typer) -> None:
    app.command(name="score", help=HELP)(score)


def score(
    input: str = typer.Argument(..., metavar="INPUT", help="parquet/jsonl/csv file, a directory of them, or a Hub "
                                "dataset id."),
    teacher: str = typer.Option(..., "--teacher", help="Teacher model: Hub id or local folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Output directory for part-*.parquet (bookkeeping "
                                "and manifest.json in its .ettin/ folder)."),
    teacher_format: str = typer.Option("auto", "--teacher-format",
                                       help="auto | mxbai-v2 | qwen3-reranker | cross-encoder | bi-encoder | "
                                       "path/to/format.yaml (a judge format of your own; see recipes/teachers/). "
                                       "auto reads the model's config and says what it picked."),
    teacher_revision: str | None = typer.Option(None, "--teacher-revision", help="Hub revision of the teacher."),
    config: str | None = typer.Option(None, "--config", help="Hub dataset config (subset) name."),
    split: str = typer.Option("train", "--split", help="Hub dataset split."),
    query_column: str = typer.Option("query", "--query-column", help="Column holding the queries."),
    document_column: str = typer.Option("document", "--document-column", help="Column holding the documents."),
    score_column: str = typer.Option("score", "--score-column", help="Name of the new score column."),
    max_length: int | None = typer.Option(None, "--max-length", help="Max tokens per pair (default: a judge "
                                          "format's own, 8192 for mxbai-v2 and qwen3-reranker; else the model's "
                                          "own limit). Longer pairs are truncated as the format says and counted "
                                          "in the manifest."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16 (auto: bf16 on a "
                              "capable GPU, fp32 on CPU)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N (auto: the local rank's GPU "
                               "if any)."),
    attn: str = typer.Option("auto", "--attn", help="auto | sdpa | eager | flash_attention_2 (auto: FA2 with "
                             "packed, unpadded sequences on a GPU that supports it)."),
    max_tokens_per_batch: int | None = typer.Option(None, "--max-tokens-per-batch",
                                                    help="Token budget per forward pass (pairs are sorted by "
                                                    "length and packed up to it; default 65536 on GPU, 16384 on "
                                                    "CPU). Out-of-memory batches are split and retried."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Max pairs per forward pass (with or "
                                          "instead of the token budget)."),
    rows_per_shard: int = typer.Option(100_000, "--rows-per-shard", help="Input rows per output shard (the unit "
                                       "of resumption and of work per rank)."),
    limit: int | None = typer.Option(None, "--limit", help="Score only the first N input rows."),
    sort_window: int = typer.Option(8192, "--sort-window", help="Pairs sorted together by length before "
                                    "batching (larger: less padding, more memory)."),
    instruction: str | None = typer.Option(None, "--instruction", help="Judge formats only: the instruction "
                                           "placed before the query (replaces the format's default: none for "
                                           "mxbai-v2, a web-search one for qwen3-reranker)."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip rows with a null query or document "
                                      "(counted and listed in the manifest) instead of failing."),
    overwrite: options.Overwrite = False,
    verify: options.Verify = False,
    num_shards: options.NumShards = None,
    shard_index: options.ShardIndex = None,
) -> None:
    from ettin_cli.io.kinds import MINED, SCORED, require_kind
    from ettin_cli.label.scoring import ScoreJob, run_score

    require_kind(input, MINED, "INPUT", accepted={MINED, SCORED})

    for name, value in (("--rows-per-shard", rows_per_shard), ("--limit", limit), ("--max-length", max_length),
                        ("--batch-size", batch_size), ("--max-tokens-per-batch", max_tokens_per_batch),
                        ("--sort-window", sort_window)):
        if value is not None and value < 1:
            raise EttinError(f"{name} must be >= 1, got {value}")
    job = ScoreJob(input=input, output=output, teacher=teacher, teacher_format=teacher_format,
                   teacher_revision=teacher_revision, query_column=query_column, document_column=document_column,
                   score_column=score_column, config=config, split=split, max_length=max_length, dtype=dtype,
                   device=device, attn=attn, instruction=instruction, batch_size=batch_size,
                   max_tokens_per_batch=max_tokens_per_batch, rows_per_shard=rows_per_shard, limit=limit,
                   skip_invalid=skip_invalid, overwrite=overwrite, num_shards=num_shards, shard_index=shard_index,
                   window_rows=sort_window, verify=verify)
    result = run_score(job)
    if result.manifest is not None:
        totals = result.manifest["totals"]
        rate = result.manifest["throughput"]["pairs_per_second_per_worker"]
        typer.echo(f"{totals['rows']:,} rows in {result.shards_total} shards -> {output} "
                   f"(truncated {totals['truncated_pairs']:,}, skipped {totals['skipped_invalid']:,}, "
                   f"{rate or 0:,.1f} pairs/s per worker)")
    else:
        typer.echo(f"worker {result.rank.rank}/{result.rank.world_size}: {len(result.shards_scored)} shards scored, "
                   f"{len(result.shards_skipped)} already done; manifest pending other workers")
