"""`training.loss` (train/losses.py): mse by default, listnet and mse+listnet as options (issue #18)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from ettin_cli.core.errors import EttinError
from ettin_cli.train.losses import group_by_query, mse_listnet_loss, resolve_loss


def test_resolve_loss_defaults_to_mse_and_refuses_unknown_names():
    assert resolve_loss({}, "r.yaml") == {"name": "mse"}
    assert resolve_loss({"loss": "listnet"}, "r.yaml") == {"name": "listnet", "list_size": 16, "temperature": 0.1}
    with pytest.raises(EttinError, match=r"r\.yaml: training\.loss must be one of mse, listnet, mse\+listnet"):
        resolve_loss({"loss": "lambda"}, "r.yaml")
    with pytest.raises(EttinError, match=r"training\.list_size must be an integer >= 2"):
        resolve_loss({"loss": "listnet", "list_size": 1}, "r.yaml")


def test_recipe_loss_reaches_the_resolved_config_and_a_bad_one_is_one_line(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("size: demo\nmodel:\n  backbone: x/y\n  max_length: 64\ntraining:\n  learning_rate: 1.0e-4\n"
                      "  global_batch_size: 32\n  loss: mse+listnet\n  list_size: 8\n")
    code, out, err = run_cli(["-q", "train", "--recipe", str(recipe), "--data", str(tmp_path), "--print-config"],
                             capsys)
    assert code == 0, err
    assert json.loads(out)["loss"] == {"name": "mse+listnet", "list_size": 8, "temperature": 0.1}
    recipe.write_text(recipe.read_text().replace("mse+listnet", "ranknet"))
    code, _, err = run_cli(["-q", "train", "--recipe", str(recipe), "--data", str(tmp_path), "--print-config"],
                           capsys)
    assert code == 2 and err.strip().startswith("error: ") and "training.loss must be one of" in err
    assert len(err.strip().splitlines()) == 1


def test_group_by_query_chunks_each_query_and_drops_single_candidates():
    from datasets import Dataset

    ds = Dataset.from_dict({"query": ["a", "b", "a", "a", "b", "c"], "document": ["a1", "b1", "a2", "a3", "b2", "c1"],
                            "label": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    grouped = group_by_query(ds, 2).to_dict()
    assert grouped["query"] == ["a", "b"]  # a's third candidate alone and c's only one have nothing to rank
    assert grouped["docs"] == [["a1", "a2"], ["b1", "b2"]]
    assert grouped["labels"] == [pytest.approx([0.1, 0.3]), pytest.approx([0.2, 0.5])]


def test_mse_listnet_is_pointwise_mse_plus_listnet_on_tempered_scores(tiny_student_path):
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(tiny_student_path), activation_fn=torch.nn.Identity())
    queries, docs = ["wing flutter", "heat transfer"], [["flutter of wings", "boundary layer", "nozzle"],
                                                         ["heat flux", "shock wave"]]
    labels = [torch.tensor([0.9, 0.2, 0.1]), torch.tensor([0.7, 0.3])]
    loss = mse_listnet_loss(model, temperature=0.5)(((queries, docs)), labels)
    with torch.no_grad():
        scores = [torch.as_tensor(model.predict([(q, d) for d in ds]), dtype=torch.float32)
                  for q, ds in zip(queries, docs, strict=True)]
    flat_s, flat_t = torch.cat(scores), torch.cat(labels)
    listnet = sum(-((t / 0.5).softmax(0) * (s / 0.5).log_softmax(0)).sum() for s, t in zip(scores, labels,
                                                                                            strict=True)) / 2
    expected = torch.mean((flat_s - flat_t) ** 2) + listnet
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-4)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_listwise_training_runs_through_the_cli_with_the_recipe_batch_in_pairs(capsys, tmp_path,
                                                                               tiny_modernbert_path, cranfield_dir):
    name = "mse+listnet"  # listnet goes through the same grouping and batch path
    rows = [{"query": f"query {q}", "document": f"document {q} {d}", "score": float(d)} for q in range(8)
            for d in range(4)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"size: tiny\nmodel:\n  backbone: {tiny_modernbert_path}\n  max_length: 32\n"
                      f"training:\n  loss: {name}\n  list_size: 4\n  global_batch_size: 8\n  learning_rate: 1.0e-4\n"
                      "  dataloader_num_workers: 0\n  eval_on_start: false\n")
    out = tmp_path / "out"
    code, _, err = run_cli(["-q", "train", "--recipe", str(recipe), "--data", str(tmp_path / "pairs.parquet"),
                            "--output-dir", str(out), "--max-steps", "2", "--eval-data", str(cranfield_dir),
                            "--eval-max-queries", "2", "--eval-top-k", "5", "--cache-dir", str(tmp_path / "c")],
                           capsys)
    assert code == 0, err
    record = json.loads((out / "final" / "ettin_training.json").read_text())
    assert record["hyperparameters"]["loss"]["name"] == name
    # The 32 rows became 8 lists of 4 candidates (one per query), read 2 lists (8 pairs) per step.
    assert record["train_rows"] == 8
    assert record["hyperparameters"]["total_steps"] == 2
