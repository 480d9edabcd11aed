"""The README.md model card of a trained Ettin reranker, rendered from its `ettin_training.json`.

One function, `render_model_card(info)`, used at the end of `ettin train` (written to `OUT/final/README.md`) and by
`ettin push --replace-card`. The card is built from the same record that describes the run, so it can never
disagree with it: base model, teacher, training data, size, hyperparameters, before/after metrics and throughput.
It opens with YAML front matter the Hub reads (license apache-2.0, library, pipeline tag, tags, base model, data
sets); only real Hub ids go into the front matter, because a local path there would make the Hub reject the card.

`info` is the JSON object of `ettin_training.json` (`TrainingRecord.to_dict()`, built in `ettin_cli.train.outputs`);
every key but `base_model` is optional, so a partial record still renders. Keys read here:

- `model_id` (the Hub repo id, for the usage snippet; `ettin push` sets it), `size`, `base_model`, `teacher`,
  `teacher_format` (`mxbai-v2` states the logit target and its range),
  `parameters` (int), `max_length`
- `data`: list of `{"source": str, "kind": "hub"|"score-dir"|"file"|"dataset-dir", "rows": int}`; `train_rows`
- `hyperparameters`: flat mapping (learning_rate, global_batch_size, ...), rendered as a table
- `evaluation`: `{"benchmark", "retriever", "top_k", "metric", "datasets"}`
- `metrics`: `{"before": {name: value}, "after": {name: value}, "best_step": int}`, `mean` listed last
- `throughput`: `{"train_pairs_per_second", "train_tokens_per_second", "train_runtime_seconds"}` (training steps
  only; `train_samples_per_second` is accepted for the pairs rate too)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ettin_cli.core.errors import EttinError

LICENSE = "apache-2.0"
BASE_TAGS = ["sentence-transformers", "cross-encoder", "reranker", "text-ranking", "ettin", "distillation"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DEFAULT_TEACHER = "mixedbread-ai/mxbai-rerank-large-v2"


def is_hub_id(name: str | None) -> bool:
    """True for `owner/name` strings that are not an existing local path (only those belong in front matter)."""
    if not name or not isinstance(name, str) or not _HUB_ID.match(name):
        return False
    return not Path(name).exists()


def _human_count(n: int | float | None) -> str:
    if n is None:
        return "unknown"
    n = float(n)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}" if unit == "B" else f"{n / scale:.1f}{unit}"
    return f"{int(n)}"


def _cell(value: Any) -> str:
    """A markdown table cell: pipes escaped, floats short, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e5 else f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _front_matter(info: dict[str, Any]) -> str:
    """The YAML header through huggingface_hub's `ModelCardData` (the Hub's own schema for model cards)."""
    from huggingface_hub import ModelCardData

    tags = [*BASE_TAGS, info.get("backbone_type") or "modernbert"]
    if info.get("size"):
        tags.append(f"ettin-{info['size']}")
    base = hub_id_of(info.get("base_model"))
    datasets = [d.get("source") for d in info.get("data") or [] if isinstance(d, dict)]
    datasets = [d for d in datasets if d and is_hub_id(d) and not d.endswith((".parquet", ".jsonl", ".json"))]
    import yaml

    meta = ModelCardData(license=LICENSE, language=["en"], library_name="sentence-transformers",
                         pipeline_tag="text-ranking", tags=tags, base_model=base, datasets=datasets or None)
    fields = meta.to_dict()
    # The Hub's field names and validation, in the order a reader expects (license first).
    order = ["license", "language", "library_name", "pipeline_tag", "tags", "base_model", "datasets"]
    ordered = {k: fields[k] for k in order if fields.get(k) is not None}
    ordered.update({k: v for k, v in fields.items() if k not in ordered and v is not None})
    return "---\n" + yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True) + "---\n"


def hub_id_of(name: str | None) -> str | None:
    """The Hub id behind a model reference: the id itself, a Hub cache snapshot's `models--ORG--NAME`, or the
    `_name_or_path` a local folder's config.json records; None when it cannot be known."""
    if not name or not isinstance(name, str):
        return None
    if is_hub_id(name):
        return name
    for part in Path(name).parts:
        if part.startswith("models--") and part.count("--") >= 2:
            candidate = "/".join(part[len("models--"):].split("--", 1))
            if _HUB_ID.match(candidate):
                return candidate
    config = Path(name) / "config.json"
    if config.is_file():
        import json

        try:
            recorded = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if isinstance(recorded, str) and _HUB_ID.match(recorded) and not Path(recorded).exists():
            return recorded
    return None


def _ref(name: str) -> str:
    """A model reference in prose: a Hub id links to its page; a local path is plain text (a link to a path on
    the training machine would be dead for every reader), followed by its Hub id when that is known."""
    if is_hub_id(name):
        return f"[`{name}`](https://huggingface.co/{name})"
    known = hub_id_of(name)
    if known:
        return f"`{known}` (local copy at {_cell(name)})"
    return f"`{_cell(name)}` (a local folder)"


def _title_size(info: dict[str, Any]) -> str:
    """The size in the title: the recipe's size (also for a custom recipe), else the parameter count."""
    recipe = info.get("recipe") if isinstance(info.get("recipe"), dict) else {}
    hyper = info.get("hyperparameters") if isinstance(info.get("hyperparameters"), dict) else {}
    size = info.get("size") or recipe.get("size") or hyper.get("size")
    if size:
        return str(size)
    if info.get("parameters"):
        return _human_count(info["parameters"]).lower()
    return "custom"


def _metrics_table(metrics: dict[str, Any], metric_label: str) -> list[str]:
    before = metrics.get("before") or {}
    after = metrics.get("after") or {}
    names = [n for n in dict.fromkeys([*before, *after]) if n != "mean"]
    if "mean" in before or "mean" in after:
        names.append("mean")
    if not names:
        return []
    lines = [f"| dataset | {metric_label} before training | {metric_label} after training | change |",
             "| --- | ---: | ---: | ---: |"]
    for name in names:
        b, a = before.get(name), after.get(name)
        delta = f"{a - b:+.4f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else "-"
        label = f"**{name}**" if name == "mean" else _cell(name)
        lines.append(f"| {label} | {_cell(b)} | {_cell(a)} | {delta} |")
    return lines


def render_model_card(info: dict[str, Any]) -> str:
    """The full README.md (front matter + markdown) for the model described by `info`."""
    if not isinstance(info, dict) or not info.get("base_model"):
        raise EttinError("model card: the training record has no 'base_model' (is this an ettin_training.json?)")
    size = _title_size(info)
    model_id = info.get("model_id") or "path/to/final"
    teacher = info.get("teacher") or DEFAULT_TEACHER
    base = info["base_model"]
    hyper = info.get("hyperparameters") or {}
    evaluation = info.get("evaluation") or {}
    metrics = info.get("metrics") or {}
    throughput = info.get("throughput") or {}
    metric_label = evaluation.get("metric", "NDCG@10")
    top_k = evaluation.get("top_k", 100)
    benchmark = evaluation.get("benchmark", "NanoBEIR")

    out: list[str] = [_front_matter(info)]
    mxbai = info.get("teacher_format") == "mxbai-v2" or "mxbai-rerank" in teacher
    scale = "roughly -12 to 22; higher means more relevant" if mxbai else "higher means more relevant"
    target = 'raw logit `logit("1") - logit("0")`' if mxbai else "raw score"
    backbone_type = info.get("backbone_type") or "modernbert"
    encoder = "ModernBERT (Ettin) encoder" if backbone_type == "modernbert" else f"{backbone_type} encoder"
    out.append(f"# Ettin reranker {size}\n")
    out.append(
        f"A pointwise cross-encoder reranker: one (query, document) pair in, one relevance score out. It was "
        f"distilled from the teacher {_ref(teacher)} into the {encoder} "
        f"{_ref(base)} by mean squared error on the teacher's raw scores, so its score is on the "
        f"teacher's scale ({scale}) and needs no calibration. Use it to "
        f"re-order the top-{top_k} candidates of a first-stage retriever (BM25 or an embedding model).\n")

    out.append("## Model details\n")
    out.append("| | |\n| --- | --- |")
    out.append(f"| Base model | `{_cell(base)}` |")
    out.append(f"| Teacher | `{_cell(teacher)}` (target: {target}, no rescaling) |")
    out.append(f"| Size | {_cell(size)} ({_human_count(info.get('parameters'))} parameters with the head) |")
    if info.get("max_length"):
        out.append(f"| Maximum sequence length | {info['max_length']} tokens (query + document) |")
    out.append("| Architecture | Transformer (AutoModel) -> CLS pooling -> Dense(H, H, no bias, GELU) -> LayerNorm "
               "-> Dense(H, 1) writing `scores`; identity activation |")
    out.append("| Output | one raw logit per pair (`predict` returns it unchanged) |")
    out.append(f"| License | {LICENSE} |\n")

    out.append("## Usage\n")
    out.append("```bash\npip install -U sentence-transformers\n```\n")
    out.append("```python\nfrom sentence_transformers import CrossEncoder\n\n"
               f'model = CrossEncoder("{model_id}")\n\n'
               'query = "How many people live in Berlin?"\n'
               'documents = [\n'
               '    "Berlin had a population of 3,520,031 registered inhabitants in 2019.",\n'
               '    "Berlin is well known for its museums.",\n'
               ']\n\n'
               "# Raw scores on the teacher's logit scale (higher = more relevant)\n"
               "scores = model.predict([(query, doc) for doc in documents])\n\n"
               "# Or rank the documents directly\n"
               "ranking = model.rank(query, documents, return_documents=True)\n"
               "for hit in ranking:\n"
               '    print(f"{hit[\'score\']:.2f}  {hit[\'text\']}")\n```\n')
    out.append("On an Ampere-or-newer GPU, load it in bfloat16 with Flash Attention 2: inputs are then unpadded "
               "(packed) and throughput is several times higher than fp32 + SDPA "
               "(`pip install flash-attn`, or `pip install kernels`):\n")
    out.append("```python\nimport torch\nfrom sentence_transformers import CrossEncoder\n\n"
               f'model = CrossEncoder(\n    "{model_id}",\n'
               '    model_kwargs={"dtype": torch.bfloat16, "attn_implementation": "flash_attention_2"},\n'
               ')\n```\n')

    out.append("## Training\n")
    data = [d for d in info.get("data") or [] if isinstance(d, dict)]
    if data:
        out.append("Training data (query, document, teacher score):\n")
        for d in data:
            rows = f", {d['rows']:,} rows" if isinstance(d.get("rows"), int) else ""
            out.append(f"- `{_cell(d.get('source'))}` ({_cell(d.get('kind', 'data'))}{rows})")
        out.append("")
    if isinstance(info.get("train_rows"), int):
        out.append(f"Training pairs in all: {info['train_rows']:,}.\n")
    loss = hyper.get("loss")
    loss_name = str(loss.get("name", "mse")) if isinstance(loss, dict) else str(loss or "mse")
    words = {"mse": "MSE between the student's raw output and",
             "listnet": "ListNet (cross-entropy between the softmax of each query's candidates' scores) on",
             "mse+listnet": "MSE plus ListNet over each query's candidates, between the student's raw output and"}
    out.append(f"Loss: {words.get(loss_name, words['mse'])} the {target} of `{teacher}`.\n")
    if hyper:
        out.append("| hyperparameter | value |\n| --- | --- |")
        for key, value in hyper.items():
            if isinstance(value, dict):  # e.g. the loss: its name, then its settings
                rest = ", ".join(f"{k} {v}" for k, v in value.items() if k != "name")
                value = f"{value.get('name', '')}" + (f" ({rest})" if rest else "")
            out.append(f"| {_cell(key)} | {_cell(value)} |")
        out.append("")
    if throughput:
        parts = []
        pairs = throughput.get("train_pairs_per_second", throughput.get("train_samples_per_second"))
        if pairs is not None:
            parts.append(f"{pairs:,.1f} pairs/s")
        if throughput.get("train_tokens_per_second") is not None:
            parts.append(f"{throughput['train_tokens_per_second']:,.0f} tokens/s")
        if throughput.get("train_runtime_seconds") is not None:
            parts.append(f"{throughput['train_runtime_seconds']:,.0f} s in all")
        if parts:
            out.append(f"Training throughput: {', '.join(parts)}.\n")

    out.append("## Evaluation\n")
    table = _metrics_table(metrics, metric_label)
    datasets = evaluation.get("datasets")
    where = f" ({', '.join(datasets)})" if datasets else ""
    if table:
        out.append(f"{benchmark}{where}: the top-{top_k} candidates of {evaluation.get('retriever', 'BM25')} "
                   f"reranked (positives not forced in), {metric_label}, before and after training:\n")
        out.extend(table)
        if metrics.get("best_step") is not None:
            out.append(f"\nThe checkpoint kept is the best by mean {metric_label}, at step {metrics['best_step']}.")
        out.append("")
    else:
        out.append("No evaluation was recorded for this model.\n")
    return "\n".join(out).rstrip() + "\n"
