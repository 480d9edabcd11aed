"""Is the teacher worth its labels? Teacher vs the retriever alone on dev queries, before any pair is scored.

A student distilled from a teacher learns the teacher's order at best; when the teacher does not rerank the
retriever's top-k better than the retriever's own order, a day of GPU scoring and a training run can only
produce a reranker that loses to BM25 (issue #23: an offline teacher at 0.375 vs BM25 0.377, found out after
training). Reranking a few dozen dev queries costs seconds to minutes, so the route checks it first.

The check is `evaluation.compare_models` with the teacher as the only model (the retriever is always the
report's first entry), on the split that picks checkpoints (dev), never the test split. The margin is the
teacher's mean NDCG@10 minus the retriever's; below `min_margin` (recipes/data.yaml `teacher_check:`) the teacher
is weak: a loud warning, and the caller stops unless told to go on.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from ettin_cli.core.console import logger
from ettin_cli.core.errors import EttinError
from ettin_cli.measure.evaluation import compare_models


@dataclass(frozen=True)
class TeacherCheck:
    """The check's verdict: both mean NDCG@10 values, their margin and the threshold it was held to."""

    teacher: str
    retriever: str
    split: str
    queries: int
    teacher_ndcg: float
    retriever_ndcg: float
    margin: float
    min_margin: float

    @property
    def weak(self) -> bool:
        return self.margin < self.min_margin

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "weak": self.weak}

    def summary(self) -> str:
        return (f"teacher NDCG@10 {self.teacher_ndcg:.4f} vs {self.retriever} {self.retriever_ndcg:.4f} on "
                f"{self.queries} {self.split} queries: margin {self.margin:+.4f} (required >= {self.min_margin:+.4f})")


def check_teacher(teacher: str, data: Any, *, min_margin: float, teacher_format: str = "auto",
                  split: str = "dev", top_k: int = 100, retriever: str = "bm25", max_queries: int | None = None,
                  output_dir: str | os.PathLike[str] | None = None, **model_options: Any) -> TeacherCheck:
    """Rerank the retriever's top-`top_k` of the `split` queries with the teacher; the verdict (no raise).

    `model_options` go to `compare_models` (device, dtype, attn, max_length, batch_size, instruction).
    """
    if split == "test":
        raise EttinError("--split test: the teacher check reads the dev queries, never the test queries that "
                         "report the result (make them with `ettin split`)")
    report = compare_models([teacher], data, formats=[teacher_format], retriever=retriever, top_k=top_k,
                            output_dir=output_dir, max_queries=max_queries, split=split, **model_options)
    base, entry = report["results"][0], report["results"][1]
    queries = sum(int(v["queries"]) for v in report["datasets"].values())
    t, r = float(entry["mean"]["ndcg@10"]), float(base["mean"]["ndcg@10"])
    return TeacherCheck(teacher=str(teacher), retriever=base["model"].removesuffix(" (retriever)"), split=split,
                        queries=queries, teacher_ndcg=t, retriever_ndcg=r, margin=t - r, min_margin=float(min_margin))


def enforce(check: TeacherCheck, *, allow_weak: bool) -> None:
    """Log the verdict; a weak teacher is a loud warning, and an error unless `allow_weak`."""
    if not check.weak:
        logger.info(f"teacher check passed: {check.summary()}")
        return
    logger.warning(f"WEAK TEACHER: {check.summary()}. A student learns the teacher's order at best: scoring "
                   "with it and training on its labels cannot beat the retriever here.")
    if not allow_weak:
        raise EttinError(f"the teacher does not beat {check.retriever} by the required margin on the {check.split} "
                         f"queries ({check.margin:+.4f} < {check.min_margin:+.4f}): choose a stronger teacher, or "
                         "pass --allow-weak-teacher to score with it anyway")
