"""`ettin train`: pointwise distillation of a teacher's raw scores into an Ettin (ModernBERT) student.

Read top to bottom, a run is the release's training script: config -> data -> student -> trainer -> train ->
save and record. The pieces around it live beside this file: `config` (the one `TrainConfig`), `data` (pairs
from score folders, files, dataset folders, Hub ids), `checkpoints` (which run a folder holds, which checkpoint
to continue from), `evaluators` (NanoBEIR / BEIR, mean NDCG@10 picks the best checkpoint), `callbacks` (token
meter, rates, progress, checkpoint records) and `outputs` (final model, record, metrics, curves).

Fault tolerance: a rerun (or `--resume`) of the same config into the same folder continues from the newest
complete checkpoint; the trainer restores optimizer, scheduler, RNG and the data position, and the sampler is
seeded, so the data order is that of an uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ettin_cli.core.console import logger
from ettin_cli.core.distributed import current_rank
from ettin_cli.core.errors import EttinError
from ettin_cli.core.hardware import Precision
from ettin_cli.publish.training_record import TrainingRecord
from ettin_cli.train import checkpoints, data, outputs
from ettin_cli.train.callbacks import TokenMeter, make_callbacks, trainer_class
from ettin_cli.train.config import TrainConfig
from ettin_cli.train.evaluators import make_evaluator, require_nanobeir
from ettin_cli.train.losses import prepare_loss
from ettin_cli.train.student import build_student, check_unpadding, head_plan, init_head, load_cross_encoder_base


def run_training(config: TrainConfig, *, callbacks: list | None = None) -> dict[str, Any]:
    """Train (or continue training) the run described by `config`; return the training record (its JSON object).

    `callbacks` are extra `transformers.TrainerCallback`s (tests use one to interrupt a run).
    """
    import torch
    from transformers import PrinterCallback, ProgressCallback

    # 1. Config: this launch must be the one the config was resolved for; a finished run is not redone.
    rank = current_rank()
    if rank.world_size != config.world_size:
        raise EttinError(f"the config was resolved for world size {config.world_size}, "
                         f"but this launch has {rank.world_size} processes")
    out = Path(config.output_dir)
    state = checkpoints.check_output_dir(config)
    if state == "resume" and outputs.has_pending(out):
        # Trained and saved, interrupted while writing the other outputs: finish them, do not train again.
        if rank.is_main:
            logger.info(f"{out}: the final model is saved but its outputs are not all written; finishing them")
            return outputs.finish_pending(out).to_dict()
        return json.loads((out / outputs.FINAL_TMP / outputs.PENDING_FILE).read_text(encoding="utf-8"))["record"]
    if state == "done":
        logger.info(f"{out}: this run is already complete (final model in {out / 'final'}); nothing to do")
        return TrainingRecord.read(out / "final").to_dict()
    if config.evaluation["benchmark"] == "nanobeir":  # the Hub check of the default evaluation, before any loading

        require_nanobeir()
    args = config.trainer_arguments()  # initialises torch.distributed under torchrun

    # 2. Data, loaded and checked before anything is written (bad input leaves the folder untouched).
    with args.main_process_first(desc="loading data"):
        train_ds, eval_ds, data_summary = data.load_train_and_eval(config)

    # 3. Student.
    model = build_student_for(config, train_ds)
    data_summary["truncation"] = fit_max_length(config, model, train_ds, data_summary.get("teacher_max_length"))
    evaluator = make_evaluator(config)

    # 4. Output folder: the global main process binds it and moves broken checkpoints aside before the others look.
    with args.main_process_first(local=False, desc="output folder"):
        if args.process_index == 0:
            checkpoints.bind_output_dir(config)
        resume_from = checkpoints.latest_complete_checkpoint(out, move_aside=args.process_index == 0)
        if config.save_initial and args.process_index == 0 and not (out / "initial").exists():
            # The untrained student (same seed, same head init): the "before" line of an `ettin eval` table.
            outputs.save_model_atomic(model, out / "initial")
    if config.resume and resume_from is None:
        logger.warning(f"--resume: no complete checkpoint in {out}; starting from the beginning")
    if resume_from is not None:
        logger.info(f"resuming from {resume_from.name}")
        args.eval_on_start = False  # the "before" evaluation is in the checkpoint's history already

    # 5. Trainer.
    meter = TokenMeter(model)
    loss, train_ds, eval_ds = prepare_loss(config.loss, model, train_ds, eval_ds, args)
    trainer = trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, loss=loss,
                              evaluator=evaluator, callbacks=[*make_callbacks(config, meter), *(callbacks or [])])
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)

    # 6. Train; the kept model's evaluation (the best checkpoint's is in the history already).
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    history = list(trainer.state.log_history)  # the run's own logs, without any evaluation below
    after, final_model = outputs.final_evaluation(trainer, history)
    meter.close()

    # 7. Save and record.
    data_summary["train_rows"] = len(train_ds)
    record = outputs.build_record(config, model=model, state=trainer.state, history=history,
                                  train_metrics=result.metrics, final_model=final_model,
                                  after=after, data=data_summary, observed_batch=meter.max_rows,
                                  resumed_from=resume_from.name if resume_from else None)
    record.quality_flags = outputs.check_quality(record, data_summary["validation_variance"]) if rank.is_main else []
    if rank.is_main:
        outputs.save_final(trainer, out, record, history, after)
    if args.world_size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return record.to_dict()


def backbone_limit(model: Any) -> int:
    """The most tokens the student's backbone can read: its position embeddings (a saved student's tokenizer
    may carry the shorter length it was trained at), else the length it was loaded with."""
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    return int(positions) if isinstance(positions, int) and positions > 0 else int(model.max_seq_length)


def fit_max_length(config: TrainConfig, model: Any, train_ds: Any,
                   teacher_max_length: int | None = None) -> dict[str, Any]:
    """Set the student's max length when the recipe says `auto` (the training pairs' 95th percentile of token
    lengths, rounded up to a multiple of 32, capped by the backbone and by `--max-length`); count the pairs still
    cut at the length it trains with, warning (WARNING) when more than a quarter are. Returns the count."""

    seed = config.training["seed"]
    lengths, sampled = data.pair_lengths(model.tokenizer, train_ds, seed=seed)
    chosen: dict[str, Any] = {}
    if config.max_length == "auto":
        limit = backbone_limit(model)
        cap = min(limit, config.max_length_cap) if config.max_length_cap else limit
        length = data.fitted_length(lengths, cap)
        model.max_seq_length = length
        capped = length == cap and data.fitted_length(lengths) > cap
        by = ("--max-length" if config.max_length_cap and config.max_length_cap < limit else "the backbone")
        logger.info(f"max length auto: {length:,} tokens, the {data.AUTO_PERCENTILE}th percentile of the training "
                    f"pairs' token lengths rounded up to a multiple of {data.AUTO_MULTIPLE}"
                    + (f", capped at {cap:,} by {by}" if capped else f" (at most {cap:,}: {by})"))
        chosen = {"auto": True, "cap": cap, "fitted": data.fitted_length(lengths)}
    counted = data.count_cut_pairs(model.tokenizer, train_ds, model.max_seq_length, lengths=lengths,
                                   sampled=sampled, teacher_max_length=teacher_max_length)
    return {**counted, **chosen}


def build_student_for(config: TrainConfig, train_ds: Any) -> Any:
    """The student: a cross-encoder base continues from itself, head included (`model.head` auto or keep);
    otherwise the recipe's new head on the base's encoder, started as the recipe says (CPU; the trainer moves it).
    The log names which of the two it is."""

    prec = Precision(config.precision["dtype"], config.precision["attn"])
    fixed_length = config.max_length if isinstance(config.max_length, int) else None
    plan, _ = head_plan(config.backbone, config.head)
    if plan == "keep":
        model = load_cross_encoder_base(config.backbone, max_length=fixed_length, precision=prec,
                                        head_activation=config.head_activation)
        logger.info(f"student: continuing from the model's own head ({config.backbone} is a cross-encoder: "
                    f"{', '.join(type(m).__name__ for m in model)}); model.pooling and model.head_init do not apply "
                    "(model.head: new asks for a new head)")
        check_unpadding(model, prec)
        return model
    logger.info(f"student: new head on a bare encoder ({config.backbone}"
                + (", its own head set aside: model.head is new)" if config.head == "new" else ")"))
    model = build_student(config.backbone, max_length=fixed_length, precision=prec,
                          seed=config.training["seed"], device="cpu", for_training=True, pooling=config.pooling)
    if config.head_init != "default":
        targets = train_ds.with_format("numpy")["label"]  # one column, read once (memory-mapped)
        start = init_head(model, config.head_init, targets, seed=config.training["seed"])
        if start:
            logger.info(f"head: output bias at the targets' mean {start['bias']:.4g} "
                        f"(targets' std {start['targets_std']:.4g}), small output weights")
    check_unpadding(model, prec)
    if config.precision["recipe"].endswith("flash_attention_2") and not prec.unpadded \
            and config.precision["device"].startswith("cuda"):
        logger.warning("!!! the recipe trains with bf16 + Flash Attention 2 on unpadded inputs, but this GPU run "
                       f"uses {prec.dtype} + {prec.attn}: expect a several-fold slower run (see `ettin env`) !!!")
    return model
