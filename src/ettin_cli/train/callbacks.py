"""Trainer glue: token counting, checkpoint completion records, training rates and progress, the trainer class.

The rates count training steps only: the clock restarts after every evaluation, checkpoint and log, so an
interval's pairs/s and tokens/s are the model's, not diluted by evaluation time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ettin_cli.core.console import logger, progress
from ettin_cli.train.checkpoints import write_checkpoint_record
from ettin_cli.train.config import TrainConfig


class TokenMeter:
    """Counts the tokens the student reads in training forward passes (packed or padded), via a pre-hook.

    The collator hands raw text to the loss, which tokenizes; so the trainer cannot count tokens itself.
    Nothing here syncs the device during a step: a padded batch's mask sum is added to a counter that stays on
    the device, a packed batch's length is a shape (host). `total()` reads (and across ranks, sums with one
    all_reduce) both: it runs at logging steps and checkpoints only, so a GPU pipeline is never stalled per step.
    """

    def __init__(self, model) -> None:
        self.host_tokens = 0
        self.device_tokens = None  # a 0-d long tensor on the batches' device, created on the first padded batch
        self.max_rows = 0
        self.reductions = 0
        self._model = model
        self._handle = model[0].register_forward_pre_hook(self._hook)

    def _hook(self, module, args) -> None:
        if not module.training or not args:
            return
        features = args[0]
        if "cu_seq_lens_q" in features:
            self.host_tokens += int(features["input_ids"].numel())
            rows = int(features["cu_seq_lens_q"].shape[0]) - 1
        elif "attention_mask" in features:
            import torch

            mask = features["attention_mask"]
            summed = mask.sum(dtype=torch.long)
            self.device_tokens = summed if self.device_tokens is None else self.device_tokens + summed
            rows = int(mask.shape[0])
        else:
            return
        self.max_rows = max(self.max_rows, rows)

    def total(self, device: Any = None, world_size: int = 1) -> int:
        """Tokens counted so far, summed over ranks when `world_size` > 1: one host sync, one collective."""
        import torch

        local = self.device_tokens if self.device_tokens is not None else torch.zeros((), dtype=torch.long)
        t = (local.to(device) if device is not None else local) + self.host_tokens
        if world_size > 1:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                t = t.reshape(1).to(device if device is not None else t.device)
                dist.all_reduce(t)
                self.reductions += 1
        return int(t.sum().item())

    def close(self) -> None:
        self._handle.remove()


def make_callbacks(config: TrainConfig, meter: TokenMeter) -> list:
    """The callbacks every run gets (rank 0 writes, every rank counts)."""
    from transformers import TrainerCallback

    global_batch = config.global_batch_size
    world = config.world_size

    class CheckpointRecord(TrainerCallback):
        """Marks a checkpoint complete once the trainer has written every file of it (rank 0)."""

        def on_save(self, args, state, control, **kwargs):
            # Every rank writes its own RNG state into the checkpoint: wait for all before declaring it complete.
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            if state.is_world_process_zero:
                path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if path.is_dir():
                    write_checkpoint_record(path, state.global_step)

    class Throughput(TrainerCallback):
        """Tokens seen (kept in the trainer state, so it survives a resume) and training rates in the logs.

        Rates count training steps only: the clock restarts after every evaluation, checkpoint and log, so an
        interval's pairs/s and tokens/s are the model's, not diluted by evaluation time.
        """

        def __init__(self) -> None:
            self.base_tokens = 0
            self.clock = 0.0
            self.busy = 0.0
            self.last: tuple[float, int, int] | None = None

        def _restart(self, *args, **kwargs):
            self.clock = time.perf_counter()

        on_evaluate = _restart

        def on_train_begin(self, args, state, control, **kwargs):
            self.base_tokens = int(state.num_input_tokens_seen or 0)
            self.busy = 0.0
            self.last = (0.0, state.global_step, self.base_tokens)
            self._restart()

        def on_step_end(self, args, state, control, **kwargs):
            self.busy += time.perf_counter() - self.clock
            # The token count is read (one host sync, one all_reduce) only where it is used: before a log line,
            # before a checkpoint saves the state (a resume starts from its count) and at the last step. The
            # trainer has set these flags for this step on every rank alike, so the collective lines up.
            if control.should_log or control.should_save or control.should_training_stop:
                state.num_input_tokens_seen = self.base_tokens + meter.total(args.device, world)
            self._restart()

        def on_save(self, args, state, control, **kwargs):
            self._restart()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and self.last is not None and state.log_history:
                busy0, step0, tok0 = self.last
                entry = state.log_history[-1]
                dt = max(self.busy - busy0, 1e-9)
                entry["samples_per_second"] = round((state.global_step - step0) * global_batch / dt, 3)
                entry["tokens_per_second"] = round((state.num_input_tokens_seen - tok0) / dt, 1)
                entry["tokens_seen"] = int(state.num_input_tokens_seen)
                self.last = (self.busy, state.global_step, int(state.num_input_tokens_seen))
            self._restart()

    class Progress(TrainerCallback):
        """A console.progress bar in pairs (rate and ETA of training steps only) and one log line per logging
        step, on rank 0."""

        def __init__(self) -> None:
            self._cm = None
            self._bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return

            remaining = max(state.max_steps - state.global_step, 0) * global_batch
            self._cm = progress(remaining, "training", unit="pairs")
            self._bar = self._cm.__enter__()
            self._bar.pause()  # until the first step starts (the evaluation before training is not counted)

        # The bar's clock runs from a step's start to its end only: evaluation, checkpoints and logging between
        # steps are left out of its rate and ETA (as they are of the logged pairs/s).
        def on_step_begin(self, args, state, control, **kwargs):
            if self._bar is not None:
                self._bar.resume()

        def on_step_end(self, args, state, control, **kwargs):
            if self._bar is not None:
                self._bar.advance(global_batch)
                self._bar.pause()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if "loss" in logs:
                logger.info(f"step {state.global_step}/{state.max_steps}: loss {logs['loss']:.4f}, "
                            f"lr {logs.get('learning_rate', 0):.3g}")
            primary = f"eval_{config.primary_metric}"
            if primary in logs:
                logger.info(f"step {state.global_step}: {config.evaluation['benchmark']} mean NDCG@10 "
                            f"{logs[primary]:.4f}" + (f", eval loss {logs['eval_loss']:.4f}"
                                                      if "eval_loss" in logs else ""))

        def on_train_end(self, args, state, control, **kwargs):
            if self._cm is not None:
                self._cm.__exit__(None, None, None)
                self._cm = self._bar = None

    return [CheckpointRecord(), Throughput(), Progress()]


def trainer_class():
    """`CrossEncoderTrainer` that saves on the saving process only and evaluates under mixed precision.

    transformers 5 calls `_save` on every rank and leaves the "should this rank write" test to it; Sentence
    Transformers 6.2's override drops that test, so under torchrun every rank would write the same checkpoint
    files at once. The guard restores the transformers behaviour.
    """
    from sentence_transformers.cross_encoder import CrossEncoderTrainer

    class EttinTrainer(CrossEncoderTrainer):
        def _save(self, output_dir: str | None = None, state_dict=None) -> None:
            if not self.args.should_save:
                return
            super()._save(output_dir, state_dict)

        def get_eval_dataloader(self, *args, **kwargs):
            # `dataloader_drop_last` (the release's) is for training batches: the eval loss reads every row.
            drop, self.args.dataloader_drop_last = self.args.dataloader_drop_last, False
            try:
                return super().get_eval_dataloader(*args, **kwargs)
            finally:
                self.args.dataloader_drop_last = drop

        def evaluate(self, *args, **kwargs):
            # The evaluators call `model.predict` outside the trainer's autocast. With fp32 master weights,
            # Flash Attention would then get fp32 inputs (which it rejects) and bf16 training would be evaluated
            # in fp32: run the whole evaluation under the run's mixed precision (a no-op in fp32).
            with self.accelerator.autocast():
                return super().evaluate(*args, **kwargs)

    return EttinTrainer
