"""The evaluators that pick the best checkpoint: online NanoBEIR or offline BEIR folders, mean NDCG@10.

Online: Sentence Transformers' `CrossEncoderNanoBEIREvaluator` (13 sets, BM25 top-100, positives not forced
in). Offline (`--eval-data`): BM25 top-k with bm25s once, reranked at every evaluation, NDCG@10 through
`evaluation.evaluate_reranker`. Either is the trainer's evaluator, so its mean NDCG@10 picks the best checkpoint;
it also runs before training (`eval_on_start`) and after.
"""

from __future__ import annotations

from typing import Any

from ettin_cli.core.errors import EttinError
from ettin_cli.core.sources import resolve_source
from ettin_cli.measure.eval_data import NANOBEIR_ID, load_eval_data
from ettin_cli.measure.evaluation import evaluate_reranker, retrieve_candidates
from ettin_cli.train.config import TrainConfig
from ettin_cli.train.data import _first_line


def _limit_queries(datasets: list, max_queries: int | None) -> list:
    return [ds.first_queries(max_queries) for ds in datasets]


def make_beir_evaluator(dirs: list[str], *, top_k: int, batch_size: int, max_queries: int | None = None,
                        split: str = "test"):
    """The offline evaluator: BM25 top-`top_k` computed once, reranked by the model at every evaluation.

    `split` is the qrels split (`qrels/<split>.tsv`) whose queries pick the checkpoint: a dev split, so that the
    test queries that report the result never choose it."""
    from sentence_transformers.base.evaluation import BaseEvaluator

    datasets, known = load_eval_data(list(dirs), top_k=top_k, split=split)
    datasets = _limit_queries(datasets, max_queries)
    candidates = {**known, **retrieve_candidates([d for d in datasets if d.name not in known], "bm25", top_k)}

    class BeirRerankEvaluator(BaseEvaluator):
        """BEIR folders, BM25 top-k reranked by `model.predict`; mean NDCG@10 is the primary metric.

        `model.predict` goes through Sentence Transformers' distributed inference under DDP, so every rank
        helps score while rank 0 computes the metrics.
        """

        def __init__(self) -> None:
            super().__init__()
            self.name = f"BEIR_R{top_k}"
            self.primary_metric = "mean_ndcg@10"
            self.datasets = datasets
            self.candidates = candidates
            self.last_result: dict[str, Any] | None = None

        def __call__(self, model, output_path: str | None = None, epoch: float = -1, steps: int = -1,
                     *args, **kwargs) -> dict[str, float]:
            def score(queries: list[str], documents: list[str]):
                pairs = list(zip(queries, documents, strict=True))
                return model.predict(pairs, batch_size=batch_size, show_progress_bar=False)

            result = evaluate_reranker(score, self.datasets, top_k, candidates=self.candidates,
                                       description="Evaluating")
            self.last_result = result
            metrics: dict[str, float] = {}
            for name, values in result["datasets"].items():
                metrics[f"{name}_ndcg@10"] = values["ndcg@10"]
                metrics[f"{name}_mrr@10"] = values["mrr@10"]
            for metric, value in result["mean"].items():
                metrics[f"mean_{metric}"] = value
            metrics = self.prefix_name_to_metrics(metrics, self.name)
            self.store_metrics_in_model_card_data(model, metrics, int(epoch or 0), int(steps or 0))
            return metrics

        def get_config_dict(self) -> dict[str, Any]:
            return {"top_k": top_k, "datasets": [d.name for d in self.datasets]}

    return BeirRerankEvaluator()


def require_nanobeir() -> None:
    """Offline (or no route to the Hub) and not cached: one line within a second, not the Hub client's retries."""

    resolve_source(NANOBEIR_ID, option="the default evaluation (NanoBEIR)", repo_type="dataset",
                   offline_hint="--eval-data DIR (a BEIR folder; `ettin split` makes its dev split)")


def make_nanobeir_evaluator(names: list[str], *, top_k: int, batch_size: int):
    """The online evaluator of the recipe: all 13 NanoBEIR sets, BM25 top-k, positives not forced in (Hub data)."""
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderNanoBEIREvaluator

    require_nanobeir()
    try:
        return CrossEncoderNanoBEIREvaluator(dataset_names=list(names), rerank_k=top_k, at_k=10,
                                             always_rerank_positives=False, batch_size=batch_size)
    except Exception as exc:  # noqa: BLE001 - Hub unreachable, missing subsets
        raise EttinError(f"NanoBEIR: cannot load the evaluation sets from the Hub ({_first_line(exc)}); "
                         "evaluate offline with --eval-data DIR (BEIR layout)") from None


def make_evaluator(config: TrainConfig):
    """The run's evaluator; its metric key is checked against the config's primary metric."""
    ev = config.evaluation
    batch = config.per_device_batch_size
    if ev["benchmark"] == "beir":
        evaluator = make_beir_evaluator(ev["datasets"], top_k=ev["top_k"], batch_size=batch,
                                        max_queries=ev["max_queries"], split=ev.get("split", "test"))
    else:
        evaluator = make_nanobeir_evaluator(ev["datasets"], top_k=ev["top_k"], batch_size=batch)
    if evaluator_metric_key(evaluator) != ev["primary_metric"]:  # a bug, not a user error
        raise RuntimeError(f"evaluator metric {evaluator_metric_key(evaluator)} != configured {ev['primary_metric']}")
    return evaluator


def evaluator_metric_key(evaluator) -> str:
    """The key under which `evaluator` reports its primary metric (Sentence Transformers prefixes it lazily)."""
    name, primary = evaluator.name, evaluator.primary_metric
    return primary if primary.startswith(f"{name}_") else f"{name}_{primary}"


def metric_table(metrics: dict[str, float], primary: str) -> dict[str, float]:
    """`{dataset: ndcg@10, ..., "mean": ...}` from an evaluation's metrics (either evaluator's key layout)."""
    prefix = primary[: -len("mean_ndcg@10")]
    table = {}
    for key, value in metrics.items():
        key = key.removeprefix("eval_")
        if not key.endswith("ndcg@10") or "base_" in key:
            continue
        if key == primary:
            table["mean"] = float(value)
        elif key.startswith(prefix):
            table[key[len(prefix):-len("_ndcg@10")]] = float(value)
        elif key.startswith("Nano") and "_R" in key:
            table[key.split("_R", 1)[0]] = float(value)
    return table
