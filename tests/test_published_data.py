"""`ettin train` on the published data as released: a local replica of `cross-encoder/ettin-reranker-v1-data`
(39 configs under the published names, query/document/label float32, `validation` in `quora` only, the card's
`configs:` front matter as `publish/dataset_layout.py` writes it) goes through the Hub id's code path; the target
column is found without a flag; the student keeps the backbone's maximum length."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO_ROOT, run_cli

from ettin_cli.core.errors import EttinError
from ettin_cli.train.data import load_pairs

ROWS = 30  # per config: 39 x 30 = 1,170 rows, one batch of the 17m recipe's 1,024 (drop_last) per epoch
VALIDATION_ROWS = 6
AUTO = {"query": "query", "document": "document", "score": None}


# The 39 configs of the release, copied from ../shared/RECIPE.md ("Facts of the published release"), not from our
# own recipes/data.yaml: the replica must not inherit a mistake of the recipe it is meant to check.
PUBLISHED_CONFIGS = [
    "rerank_fever", "rerank_fiqa", "rerank_hotpotqa", "rerank_msmarco", "rerank_nq", "rerank_squadv2",
    "rerank_trivia",
    "agnews", "altlex", "amazon_qa", "amazon_reviews", "arxiv_title_abstract", "beir_dbpedia",
    "biorxiv_title_abstract", "cc_news_en", "cnn_dailymail", "fw_edu", "gooaq_qa", "medrxiv_title_abstract",
    "msmarco", "mtp", "npr", "paq", "quora", "reddit", "reddit_body_comment", "s2orc_abstract_citation",
    "s2orc_citation_titles", "s2orc_title_abstract", "stackexchange_body_body", "stackexchange_duplicate_questions",
    "stackexchange_qa", "stackexchange_title_body", "stackoverflow_title_body", "wikianswers", "wikihow",
    "yahoo_answer", "yahoo_qa", "yahoo_question_body",
]


def published_configs() -> list[str]:
    return list(PUBLISHED_CONFIGS)


def write_replica(root: Path, *, label=None, configs: list[str] | None = None, card_only: tuple[str, ...] = ()) -> Path:
    """The published layout: `CONFIG/SPLIT-00000-of-00001.parquet` and a README whose YAML lists each config's
    splits. `label(config, rows)` may replace a config's label column; `card_only` configs are in the card but
    have no files (a partial local copy)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = configs or published_configs()
    lines = ["---", "configs:"]
    for name in names:
        splits = ["train", "validation"] if name == "quora" else ["train"]
        lines += [f"- config_name: {name}", "  data_files:"]
        for split in splits:
            lines += [f"  - split: {split}", f"    path: {name}/{split}-*.parquet"]
            if name in card_only:
                continue
            n = VALIDATION_ROWS if split == "validation" else ROWS
            values = label(name, n) if label else None
            if values is None:  # the published ranges: train about -3 to 14, validation 4.4 to 18.6
                low, high = (4.4, 18.6) if split == "validation" else (-3.0, 14.0)
                values = pa.array([low + (high - low) * (i % 7) / 6 for i in range(n)], pa.float32())
            (root / name).mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table({"query": [f"{name} {split} query {i // 4}" for i in range(n)],
                                     "document": [f"{name} document {i}" for i in range(n)], "label": values}),
                           root / name / f"{split}-00000-of-00001.parquet")
    lines += ["---", "", "# replica of cross-encoder/ettin-reranker-v1-data", ""]
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("\n".join(lines), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def replica(tmp_path_factory) -> Path:
    return write_replica(tmp_path_factory.mktemp("published") / "ettin-reranker-v1-data")


def test_recipes_data_yaml_names_exactly_the_published_configs():
    import yaml

    recipe = yaml.safe_load((REPO_ROOT / "recipes" / "data.yaml").read_text(encoding="utf-8"))
    assert len(PUBLISHED_CONFIGS) == len(set(PUBLISHED_CONFIGS)) == 39
    assert sorted(s["name"] for s in recipe["sources"]) == sorted(PUBLISHED_CONFIGS)


def test_every_config_train_split_concatenated_and_quora_validation_for_the_eval_loss(replica, tmp_path):
    train, summary = load_pairs([str(replica)], AUTO, split="train", cache_dir=str(tmp_path / "c"))
    assert len(train) == 39 * ROWS and train.column_names == ["query", "document", "label"]
    assert summary == [{"source": str(replica), "kind": "dataset-dir", "rows": 39 * ROWS, "target_column": "label"}]
    assert {q.split(" ")[0] for q in train["query"]} == set(published_configs())
    val, _ = load_pairs([str(replica)], AUTO, split="validation", cache_dir=str(tmp_path / "c"), required=False)
    assert len(val) == VALIDATION_ROWS and all(q.startswith("quora validation") for q in val["query"])


def test_the_target_column_is_label_or_score_and_never_guessed(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for target in ("label", "score"):
        path = tmp_path / f"{target}.parquet"
        pq.write_table(pa.table({"query": ["q"], "document": ["d"], target: [1.5]}), path)
        ds, summary = load_pairs([str(path)], AUTO, cache_dir=str(tmp_path / "c"))
        assert ds["label"] == [1.5] and summary[0]["target_column"] == target
    both = tmp_path / "both.parquet"
    pq.write_table(pa.table({"query": ["q"], "document": ["d"], "label": [1.0], "score": [2.0]}), both)
    with pytest.raises(EttinError, match=r"both 'label' and 'score' columns \(columns: query, document, label, "
                                         r"score\); name the target with --score-column"):
        load_pairs([str(both)], AUTO, cache_dir=str(tmp_path / "c"))
    ds, _ = load_pairs([str(both)], {**AUTO, "score": "score"}, cache_dir=str(tmp_path / "c"))  # --score-column
    assert ds["label"] == [2.0]


def assert_refused(capsys, args: list[str], pattern: str, out_dir: Path) -> None:
    code, _, err = run_cli(["-q", *args], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert not out_dir.exists(), "something was written"


def test_bad_configs_are_named_with_their_first_rows(capsys, tmp_path, tiny_modernbert_path, cranfield_dir):
    import pyarrow as pa

    out = tmp_path / "out"
    common = ["train", "--size", "17m", "--base-model", str(tiny_modernbert_path), "--output-dir", str(out),
              "--eval-data", str(cranfield_dir), "--cache-dir", str(tmp_path / "cache"), "--max-steps", "2"]
    names = ["agnews", "paq", "quora"]

    def nan_in_paq(name, n):
        return pa.array([float("nan") if name == "paq" and i in (2, 5) else 1.0 for i in range(n)], pa.float32())

    bad = write_replica(tmp_path / "nan", label=nan_in_paq, configs=names)
    assert_refused(capsys, [*common, "--data", str(bad)],
                   r"config 'paq': column 'label' has 2 NaN, infinite or missing scores \(first rows: 2, 5\)", out)
    text = write_replica(tmp_path / "text", configs=names,
                         label=lambda name, n: pa.array(["x"] * n) if name == "agnews" else None)
    assert_refused(capsys, [*common, "--data", str(text)], r"config 'agnews': column 'label' holds string, "
                   r"not numbers", out)
    partial = write_replica(tmp_path / "partial", configs=names, card_only=("paq",))
    assert_refused(capsys, [*common, "--data", str(partial)], r"config 'paq': cannot load its 'train' split", out)
    assert_refused(capsys, [*common, "--data", str(tmp_path / "no" / "such-copy")],
                   r"--data .*such-copy: no such file or folder", out)


def test_a_causal_lm_is_refused_as_base_model(capsys, tmp_path, tiny_qwen2_teacher_path, replica):
    out = tmp_path / "out"
    assert_refused(capsys, ["train", "--size", "17m", "--data", str(replica), "--base-model",
                            str(tiny_qwen2_teacher_path), "--output-dir", str(out)],
                   r"--base-model .*: is a causal LM .*a student backbone is an encoder", out)


def test_the_student_keeps_the_backbone_maximum_length(tiny_modernbert_path, tmp_path):
    from ettin_cli.core.hardware import Precision
    from ettin_cli.train.student import build_student

    backbone = tmp_path / "backbone"
    shutil.copytree(tiny_modernbert_path, backbone)
    config = json.loads((backbone / "config.json").read_text())
    config["max_position_embeddings"] = 1000  # RoPE: no position table, so the weights are unchanged
    (backbone / "config.json").write_text(json.dumps(config))
    tok = json.loads((backbone / "tokenizer_config.json").read_text())
    tok["model_max_length"] = 100_000
    (backbone / "tokenizer_config.json").write_text(json.dumps(tok))
    fp32 = Precision("float32", "sdpa")
    assert build_student(str(backbone), max_length=None, precision=fp32).max_length == 1000
    assert build_student(str(backbone), max_length=64, precision=fp32).max_length == 64  # --max-length cuts


def test_print_config_shows_the_base_model_shape_not_the_recipe_one(capsys, tiny_modernbert_path):
    code, out, err = run_cli(["train", "--size", "1b", "--print-config", "--base-model", str(tiny_modernbert_path)],
                             capsys)
    assert code == 0, err
    shape = json.loads(out)["architecture"]
    assert shape["hidden_size"] == 32 and shape["num_layers"] == 3 and shape["max_length"] == 512
    assert shape["source"].endswith("config.json") and "parameters" not in shape
    code, out, err = run_cli(["train", "--size", "1b", "--print-config", "--base-model", "someone/encoder"], capsys)
    shape = json.loads(out)["architecture"]
    assert "hidden_size" not in shape and "read at load time" in shape["max_length"]


def test_train_on_the_replica_with_no_column_flag_reports_the_validation_eval_loss(
        capsys, replica, tiny_modernbert_path, cranfield_dir, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["train", "--size", "17m", "--data", str(replica), "--base-model",
                                 str(tiny_modernbert_path), "--max-steps", "2", "--max-length", "64",
                                 "--output-dir", str(out), "--eval-data", str(cranfield_dir), "--eval-top-k", "5",
                                 "--eval-max-queries", "4", "--dataloader-workers", "0",
                                 "--cache-dir", str(tmp_path / "cache")], capsys)
    assert code == 0, err
    record = json.loads((out / "final" / "ettin_training.json").read_text())
    assert record["train_rows"] == 39 * ROWS and record["data"][0]["target_column"] == "label"
    assert record["validation_data"][0]["rows"] == VALIDATION_ROWS
    assert record["max_length"] == 64 and record["hyperparameters"]["total_steps"] == 2
    loss = record["metrics"]["after_eval_loss"]
    assert isinstance(loss, float) and loss > 0
    assert re.search(r"eval loss \d+\.\d{4}", err), err[-2000:]
