"""The training loss, `training.loss` in a recipe: the release's pointwise MSE, or a ranking-aware option.

- `mse` (default, the published recipe): Sentence Transformers' `MSELoss` on raw teacher scores, one
  (query, document, score) row per sample.
- `listnet`: Sentence Transformers' `ListNetLoss`: the cross entropy between the softmax of the teacher's scores
  and of the student's over one query's candidates. It learns the teacher's order within a query but not its
  scale or offset (adding a constant to every score of a query changes nothing), so MSE to the teacher is not
  what it optimises.
- `mse+listnet`: pointwise MSE plus a ListNet term on scores divided by `training.listwise_temperature`
  (default 0.1): the scale from MSE, and a gradient aimed at the order within a query, which pointwise MSE on
  a small batch of bi-encoder cosines (whose within-query spread is small) gives only weakly.

The listwise losses take samples of (query, [documents], [scores]): `group_by_query` turns the pointwise rows
into lists of at most `training.list_size` (default 16) candidates of one query, and the per-device batch (in
pairs) becomes `batch // list_size` lists, so an optimizer step sees as many pairs as with `mse`. Grouping
materialises the rows in memory: it is meant for small runs (the demo, a custom set), not the 143M-pair mix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ettin_cli.core.errors import EttinError

if TYPE_CHECKING:
    from datasets import Dataset
    from sentence_transformers import CrossEncoder
    from torch import Tensor, nn

LOSSES = ("mse", "listnet", "mse+listnet")
LISTWISE = ("listnet", "mse+listnet")


def resolve_loss(train: dict[str, Any], where: str) -> dict[str, Any]:
    """The loss settings of a recipe's `training` section, validated (one-line error naming the recipe key)."""
    name = str(train.get("loss", "mse"))
    if name not in LOSSES:
        raise EttinError(f"{where}: training.loss must be one of {', '.join(LOSSES)}, got {train.get('loss')!r}")
    cfg: dict[str, Any] = {"name": name}
    if name in LISTWISE:
        size = train.get("list_size", 16)
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise EttinError(f"{where}: training.list_size must be an integer >= 2, got {size!r}")
        temp = train.get("listwise_temperature", 0.1)
        if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not temp > 0:
            raise EttinError(f"{where}: training.listwise_temperature must be a number > 0, got {temp!r}")
        cfg.update(list_size=size, temperature=float(temp))
    return cfg


def group_by_query(ds: Dataset, list_size: int) -> Dataset:
    """(query, document, label) rows -> (query, docs, labels) lists of <= `list_size` candidates of one query.

    Rows keep their input order within a query; a query with more candidates gives several lists, and a list
    of one candidate (nothing to rank) is dropped.
    """
    from datasets import Dataset

    columns = ds.select_columns(["query", "document", "label"]).to_dict()
    by_query: dict[str, list[int]] = {}
    for i, query in enumerate(columns["query"]):
        by_query.setdefault(query, []).append(i)
    out: dict[str, list] = {"query": [], "docs": [], "labels": []}
    for query, rows in by_query.items():
        for start in range(0, len(rows), list_size):
            chunk = rows[start:start + list_size]
            if len(chunk) < 2:
                continue
            out["query"].append(query)
            out["docs"].append([columns["document"][i] for i in chunk])
            out["labels"].append([float(columns["label"][i]) for i in chunk])
    if not out["query"]:
        raise EttinError("training.loss listwise: no query has two or more candidates to rank")
    return Dataset.from_dict(out)


def mse_listnet_loss(model: CrossEncoder, temperature: float = 0.1) -> nn.Module:
    """Pointwise MSE + ListNet (scores / `temperature`) from one forward pass over a batch of query lists.

    Built in a function so that importing this module does not import torch (the CLI starts fast).
    """
    import torch
    from sentence_transformers.util import batch_to_device

    class _Loss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.temperature = temperature

        def forward(self, inputs: list, labels: list[Tensor], prompt: str | None = None,
                    task: str | None = None) -> Tensor:
            queries, docs_list = inputs
            pairs = [(q, d) for q, docs in zip(queries, docs_list, strict=True) for d in docs]
            tokens = batch_to_device(self.model.preprocess(pairs, prompt=prompt, task=task), self.model.device)
            logits = self.model(tokens)["scores"].view(-1).float()
            target = torch.cat([torch.as_tensor(t, dtype=torch.float32) for t in labels]).to(logits.device)
            mse = torch.nn.functional.mse_loss(logits, target)
            listnet, start = logits.new_zeros(()), 0
            for docs in docs_list:
                end = start + len(docs)
                s, t = logits[start:end] / self.temperature, target[start:end] / self.temperature
                listnet = listnet - (t.softmax(0) * s.log_softmax(0)).sum()
                start = end
            return mse + listnet / len(docs_list)

        def get_config_dict(self) -> dict[str, Any]:
            return {"temperature": self.temperature}

    return _Loss()


def prepare_loss(cfg: dict[str, Any] | str, model: CrossEncoder, train_ds: Dataset, eval_ds: Dataset | None,
                 args: Any) -> tuple[nn.Module, Dataset, Dataset | None]:
    """The loss module for `cfg` and the datasets in the shape it reads; listwise losses also set `args`' batch.

    `args` (the trainer's arguments) gets `per_device_{train,eval}_batch_size` divided by the list size, so an
    optimizer step sees as many pairs as the recipe's global batch.
    """
    from sentence_transformers.cross_encoder.losses import ListNetLoss, MSELoss

    if isinstance(cfg, str) or cfg.get("name", "mse") == "mse":
        return MSELoss(model), train_ds, eval_ds
    size = int(cfg["list_size"])
    train_ds = group_by_query(train_ds, size)
    eval_ds = group_by_query(eval_ds, size) if eval_ds is not None else None
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size"):
        setattr(args, key, max(1, getattr(args, key) // size))
    loss = ListNetLoss(model) if cfg["name"] == "listnet" else mse_listnet_loss(model, cfg["temperature"])
    return loss, train_ds, eval_ds
