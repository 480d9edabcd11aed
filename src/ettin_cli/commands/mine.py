"""`ettin mine`: first-stage candidates (BM25 or a bi-encoder) for every query of a corpus, sharded parquet."""

from __future__ import annotations

import json

import typer

from ettin_cli.commands import options

HELP = (
    "Mine up to --top-k first-stage candidates per query from a corpus: the pool the teacher scores next.\n\n"
    "The corpus is a BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv) or a parquet/jsonl/csv file or "
    "folder with an id and a text column (a `title` column is joined to the text). Output: DIR/part-*.parquet "
    "with query_id, query, doc_id, document, retriever_rank, retriever_score and, when qrels are given, "
    "is_positive; judged positives the retriever missed are appended with an empty rank (--no-add-positives "
    "to leave them out). With qrels the manifest reports recall@k.\n\n"
    "Queries are processed in blocks (one shard each; reruns skip finished shards; torchrun or "
    "--num-shards/--shard-index split the blocks across processes). The corpus is read in chunks of "
    "--chunk-size documents, so it never has to fit in memory. Defaults come from recipes/data.yaml (mining).\n\n"
    "Examples:\n\n"
    "  ettin mine --corpus data/cranfield --output mined/cranfield --top-k 256\n\n"
    "  ettin mine --corpus corpus.parquet --queries queries.parquet --qrels qrels.tsv --output mined/mine "
    "--retriever sentence-transformers/all-MiniLM-L6-v2\n\n"
    "  torchrun --nproc_per_node 8 -m ettin_cli mine --corpus corpus.jsonl --queries q.jsonl --output mined "
    "--retriever Alibaba-NLP/gte-modernbert-base --top-k 2048\n\n"
    "Already-mined candidate lists (no retrieval): --lists DATASET --source NAME reads the `queries`, "
    "`documents` and `scores` configs of DATASET (lightonai/embeddings-fine-tuning, "
    "cross-encoder/lightonai-embeddings-fine-tuning-reranked-v1, or a local folder in that layout), split NAME, "
    "and writes the same pairs schema: every listed id once per query, retriever_rank = position in the list, "
    "retriever_score = the list's score, is_positive from positive_ids. --top-k N keeps the first N of each "
    "list (default: all).\n\n"
    "  ettin mine --lists lightonai/embeddings-fine-tuning --source nq --output work/mined/rerank_nq"
)


def register(app: typer.Typer) -> None:
    app.command(name="mine", help=HELP)(mine)


def mine(
    corpus: str | None = typer.Option(None, "--corpus", help="BEIR folder, or a parquet/jsonl/csv file or folder."),
    lists: str | None = typer.Option(None, "--lists", help="A dataset of mined candidate lists (Hub id or local "
                                     "folder with configs queries, documents, scores) instead of --corpus."),
    source: str | None = typer.Option(None, "--source", help="With --lists: the source (split) to read, e.g. nq."),
    output: str = typer.Option(..., "--output", "-o", help="Output folder (sharded parquet + manifest.json)."),
    queries: str | None = typer.Option(None, "--queries", help="Queries file/folder (default: the BEIR folder's "
                                       "queries.jsonl)."),
    qrels: str | None = typer.Option(None, "--qrels", help="Judgements, query-id<TAB>corpus-id<TAB>grade "
                                     "(default: the BEIR folder's qrels/SPLIT.tsv when present)."),
    split: str = typer.Option("train", "--split", help="Qrels split of a BEIR folder whose queries are mined "
                               "(train; evaluate on another split, e.g. test)."),
    retriever: str | None = typer.Option(None, "--retriever", help="bm25, or a Sentence Transformers bi-encoder "
                                         "(folder or Hub id). Default: recipe (bm25)."),
    top_k: int | None = typer.Option(None, "--top-k", help="Candidates per query (default: recipe, 2048)."),
    chunk_size: int | None = typer.Option(None, "--chunk-size", help="Corpus documents searched at a time."),
    queries_per_shard: int | None = typer.Option(None, "--queries-per-shard", help="Queries per output shard "
                                                 "(--lists: lists per shard, default recipe lists_per_shard)."),
    add_positives: bool | None = typer.Option(None, "--add-positives/--no-add-positives",
                                              help="Append judged positives the retriever missed."),
    batch_size: int = typer.Option(64, "--batch-size", help="Bi-encoder batch size."),
    device: str | None = typer.Option(None, "--device", help="Bi-encoder device (default: auto)."),
    id_column: str | None = typer.Option(None, "--id-column", help="Corpus id column (table input)."),
    text_column: str | None = typer.Option(None, "--text-column", help="Corpus text column (table input)."),
    query_id_column: str | None = typer.Option(None, "--query-id-column", help="Query id column (table input)."),
    query_text_column: str | None = typer.Option(None, "--query-text-column", help="Query text column."),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help="With --lists: the datasets Arrow cache "
                                         "(default: HF_DATASETS_CACHE)."),
    recipe: str | None = typer.Option(None, "--recipe", help="Data recipe (default: recipes/data.yaml)."),
    overwrite: options.Overwrite = False,
    verify: options.Verify = False,
    num_shards: options.NumShards = None,
    shard_index: options.ShardIndex = None,
) -> None:
    from ettin_cli.core.errors import EttinError
    from ettin_cli.core.recipes import load_data_recipe, recipe_section
    from ettin_cli.data import mining
    from ettin_cli.io.kinds import BEIR, require_kind

    data, where = load_data_recipe(recipe)
    defaults = recipe_section(data, "mining", where)
    if (corpus is None) == (lists is None):
        raise EttinError("give --corpus (mine with a retriever) or --lists (read mined candidate lists), not both")
    if lists is not None:
        from ettin_cli.data import lists as id_lists

        if not source:
            raise EttinError("--lists needs --source NAME (the split of DATASET to read, e.g. nq)")
        list_options = id_lists.ListsOptions.from_recipe(defaults, top_k=top_k, lists_per_shard=queries_per_shard,
                                                         cache_dir=cache_dir)
        summary = id_lists.mine_lists(lists, source, output, list_options, overwrite=overwrite, verify=verify,
                                      num_shards=num_shards, shard_index=shard_index)
        typer.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    if source is not None:
        raise EttinError("--source goes with --lists")
    mine_options = mining.MineOptions.from_recipe(defaults, retriever=retriever, top_k=top_k, chunk_size=chunk_size,
                                                  queries_per_shard=queries_per_shard, add_positives=add_positives,
                                                  batch_size=batch_size, device=device)
    if corpus is not None:
        require_kind(corpus, BEIR, "--corpus")
    inputs = mining.resolve_inputs(corpus, queries, qrels, split, id_column, text_column, query_id_column,
                                   query_text_column)
    summary = mining.mine(inputs, output, mine_options, overwrite=overwrite, verify=verify, num_shards=num_shards,
                          shard_index=shard_index)
    typer.echo(json.dumps(summary, indent=2, sort_keys=True))
