"""`ettin train --size SIZE`: distil the teacher's scores into an Ettin student (MSE on raw logits)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

HELP = (
    "Train an Ettin reranker student by pointwise MSE on raw teacher scores (the six-size recipe).\n\n"
    "Reads recipes/shared.yaml + recipes/SIZE.yaml (or --recipe FILE), trains with Sentence Transformers' "
    "CrossEncoderTrainer, evaluates before, during (best checkpoint by mean NDCG@10) and after training, and writes "
    "OUT/final/ (model + ettin_training.json + model card), OUT/metrics.json, OUT/training_curves.png and "
    "checkpoints. Rerunning the same command into the same OUT resumes from the last complete checkpoint. "
    "Multi-GPU / multi-node: launch with torchrun.\n\n"
    "Examples:\n\n"
    "  ettin train --size 150m --print-config\n\n"
    "  ettin train --size 17m --data scored/ --eval-data corpus/ --eval-split dev --output-dir runs/17m\n\n"
    "  torchrun --nproc_per_node 8 -m ettin_cli train --size 1b --output-dir runs/1b\n\n"
    "  ettin train --size 68m --data pairs.parquet --score-column teacher_logit --per-device-batch-size 64\n\n"
    "  ettin train --recipe recipes/adapt.yaml --base-model cross-encoder/ettin-reranker-17m-v1 --data mine/ "
    "--data cross-encoder/ettin-reranker-v1-data:0.2 --eval-data my-heldout/   # adapt a reranker (docs/adapt.md)"
)


def register(app: typer.Typer) -> None:
    app.command(name="train", help=HELP)(train)


def train(
    size: str | None = typer.Option(None, "--size", help="Student size: 17m, 32m, 68m, 150m, 400m or 1b."),
    recipe: Path | None = typer.Option(None, "--recipe", help="A custom recipe YAML, merged over recipes/shared.yaml."),
    data: list[str] | None = typer.Option(
        None, "--data", help="Training data (repeatable): an `ettin score` folder, a .parquet/.jsonl file, a Hub "
        "data set id or a local folder in the Hub's layout (every config's train split concatenated). SOURCE:0.2 draws "
        "20% of the training rows from SOURCE (seeded), the sources without a fraction giving the rest. Default: the "
        "published cross-encoder/ettin-reranker-v1-data."),
    validation_data: list[str] | None = typer.Option(
        None, "--validation-data", help="Held-out pairs for the eval loss (repeatable; same forms as --data). "
        "Default: the Hub data set's validation split; none for local data."),
    query_column: str | None = typer.Option(None, "--query-column", help="Column holding the query (default query)."),
    document_column: str | None = typer.Option(None, "--document-column",
                                               help="Column holding the document (default document)."),
    score_column: str | None = typer.Option(None, "--score-column",
                                            help="Column holding the raw teacher score (default: whichever of "
                                            "label and score exists)."),
    base_model: str | None = typer.Option(None, "--base-model", help="Backbone: Hub id or local folder "
                                          "(default: the recipe's jhu-clsp/ettin-encoder-SIZE)."),
    output_dir: str | None = typer.Option(None, "--output-dir", "-o",
                                          help="Run folder (default runs/ettin-reranker-SIZE)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps "
                                         "(default: one epoch)."),
    learning_rate: float | None = typer.Option(None, "--learning-rate", help="Peak learning rate (default: recipe)."),
    global_batch_size: int | None = typer.Option(None, "--global-batch-size",
                                                 help="Pairs per optimizer step over all processes (default: recipe)."),
    per_device_batch_size: int | None = typer.Option(
        None, "--per-device-batch-size", help="Pairs per forward pass on each device; gradient accumulation keeps "
        "the global batch (default: global // world size)."),
    max_length: int | None = typer.Option(None, "--max-length", help="Max tokens per (query, document) pair; "
                                          "longer pairs are cut (default: the backbone's maximum, 7999 for Ettin). "
                                          "With the recipe's max_length: auto (demo, adapt): the most auto picks."),
    eval_data: list[str] | None = typer.Option(
        None, "--eval-data", help="Offline evaluation (repeatable): BEIR-layout folders, BM25 top-k reranked. "
        "Default: NanoBEIR from the Hub."),
    eval_split: str | None = typer.Option(
        None, "--eval-split", help="Qrels split of the --eval-data folders that picks the checkpoint "
        "(qrels/SPLIT.tsv, default test): give dev and report on test with `ettin eval`, so the two never share "
        "queries (`ettin split` makes the three splits)."),
    eval_top_k: int | None = typer.Option(None, "--eval-top-k", help="Candidates reranked per query (default 100)."),
    eval_max_queries: int | None = typer.Option(None, "--eval-max-queries",
                                                help="Evaluate only the first N judged queries of each set."),
    eval_steps: str | None = typer.Option(
        None, "--eval-steps", help="Evaluate every N steps (N >= 1) or every ratio r < 1 of the steps; 0: only before "
        "and after training (default: recipe, 0.05)."),
    save_steps: str | None = typer.Option(
        None, "--save-steps", help="Checkpoint every N steps or ratio r < 1 of the steps; 0: no checkpoints, only the "
        "final model (default: recipe, 0.05)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (default: recipe, 12)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on an Ampere+ GPU, else fp32), float32, bfloat16."),
    attn: str = typer.Option("auto", "--attn", help="auto (FA2 when available, else sdpa), sdpa, eager, "
                             "flash_attention_2."),
    dataloader_workers: int | None = typer.Option(
        None, "--dataloader-workers", help="Data loader workers (default: recipe, 4; 0 beyond 8 processes)."),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help="Arrow cache folder for the data "
                                         "(default: HF_DATASETS_CACHE)."),
    resume: bool = typer.Option(False, "--resume", help="Require an existing run in --output-dir and continue it."),
    save_initial: bool = typer.Option(False, "--save-initial", help="Also save the untrained student to "
                                      "OUTPUT_DIR/initial/ (the 'before' model for `ettin eval`)."),
    print_config: bool = typer.Option(False, "--print-config",
                                      help="Print the resolved configuration as JSON and exit (loads nothing)."),
) -> None:
    from ettin_cli.train.config import resolve_config

    config = resolve_config(
        size, str(recipe) if recipe else None, data=data or None, validation_data=validation_data or None,
        query_column=query_column, document_column=document_column, score_column=score_column,
        base_model=base_model, output_dir=output_dir, max_steps=max_steps, learning_rate=learning_rate,
        global_batch_size=global_batch_size, per_device_batch_size=per_device_batch_size, max_length=max_length,
        eval_data=eval_data or None, eval_split=eval_split, eval_top_k=eval_top_k,
        eval_max_queries=eval_max_queries, seed=seed,
        dtype=dtype, attn=attn, dataloader_workers=dataloader_workers, cache_dir=cache_dir, resume=resume,
        save_initial=save_initial, eval_steps=eval_steps, save_steps=save_steps,
    )
    if print_config:
        typer.echo(json.dumps(config.to_dict(), indent=2))
        return
    from ettin_cli.train.run import run_training

    if Path(config.backbone).exists():  # a local folder: refuse a model of the wrong kind before any loading
        from ettin_cli.label.fit import check_base_model

        check_base_model(config.backbone, base_model or config.backbone)
    record = run_training(config)
    after = (record.get("metrics") or {}).get("after") or {}
    if "mean" in after:
        typer.echo(f"mean NDCG@10 after training: {after['mean']:.4f} -> {Path(config.output_dir) / 'final'}")
