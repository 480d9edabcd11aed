"""`ettin eval --benchmark`: the release's two-stage MTEB evaluation through the `mteb` library, offline.

The flow runs once (module fixture) on Cranfield as a local mteb retrieval task: the real all-MiniLM-L6-v2
retrieves (stage 1, mteb's prediction folder), a real Sentence Transformers CrossEncoder (the suite's saved
Ettin student) reranks the top 10 of 6 queries (stage 2, mteb's `convert_to_reranking`). So that stage 1 stays
cheap on 2 CPU cores, the collection is Cranfield cut down in its own BEIR layout: the 6 queries, their judged
documents and the first 60 other documents, read by the same `--benchmark PATH` code path. Its NDCG@10 is then
recomputed by `ettin eval`'s own code on the same candidates: two independent implementations must agree.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

TOP_K = 10
MAX_QUERIES = 6
# mteb stores every score rounded to 5 decimals (TaskResult), so the two NDCG@10 can differ by up to 5e-6 from
# rounding alone; both rank by the same float32 scores of the same pairs, and a cross-encoder's scores have no
# ties here, so nothing else may differ. 1e-5 leaves room for float64 summation order, nothing more.
NDCG_TOLERANCE = 1e-5


OTHER_DOCUMENTS = 60


@pytest.fixture(scope="module")
def cranfield_cut(cranfield_dir, tmp_path_factory) -> Path:
    """Cranfield's first 6 judged queries, their judged documents and 60 others, as a BEIR folder `cranfield/`."""
    from ettin_cli.io.beir import load_beir

    full = load_beir(cranfield_dir)
    queries = full.judged_queries[:MAX_QUERIES]
    judged = {d for q in queries for d in full.qrels[q]}
    keep = judged | set([d for d in full.corpus if d not in judged][:OTHER_DOCUMENTS])
    out = tmp_path_factory.mktemp("cut") / "cranfield"
    (out / "qrels").mkdir(parents=True)
    with open(cranfield_dir / "corpus.jsonl", encoding="utf-8") as src, \
            open(out / "corpus.jsonl", "w", encoding="utf-8") as dst:
        dst.writelines(line for line in src if line.strip() and json.loads(line)["_id"] in keep)
    with open(out / "queries.jsonl", "w", encoding="utf-8") as dst:
        dst.writelines(json.dumps({"_id": q, "text": full.queries[q]}) + "\n" for q in queries)
    with open(out / "qrels" / "test.tsv", "w", encoding="utf-8") as dst:
        dst.write("query-id\tcorpus-id\tscore\n")
        dst.writelines(f"{q}\t{d}\t{g}\n" for q in queries for d, g in full.qrels[q].items())
    return out


@pytest.fixture(scope="module")
def cranfield(cranfield_cut):
    """The cut collection as `ettin eval --data` reads it (overrides conftest's full Cranfield in this module)."""
    from ettin_cli.io.beir import load_beir

    return load_beir(cranfield_cut)


@pytest.fixture(scope="module")
def mteb_run(cranfield_cut, minilm_path, tiny_student_path, tmp_path_factory):
    from ettin_cli.measure.mteb_eval import MtebEvalConfig, evaluate_mteb

    out = tmp_path_factory.mktemp("mteb-eval") / "out"
    config = MtebEvalConfig(models=[str(tiny_student_path)], benchmark=str(cranfield_cut),
                            retrievers=[str(minilm_path)], top_k=TOP_K, max_queries=MAX_QUERIES, output=str(out),
                            device="cpu")
    report = evaluate_mteb(config)
    return config, report, out


def _block(report):
    assert len(report["blocks"]) == 1
    return report["blocks"][0]


def _predictions(report) -> Path:
    return Path(_block(report)["results"]) / "predictions" / "cranfield_predictions.json"


def test_two_stage_ndcg_agrees_with_ettin_eval(mteb_run, cranfield, tiny_student_path):
    from mteb.cache import ResultCache

    from ettin_cli.label.teacher import load_teacher
    from ettin_cli.measure.evaluation import evaluate_candidates, evaluate_reranker

    _, report, _ = mteb_run
    block = _block(report)
    rows = {row["role"]: row for row in block["rows"]}
    # The candidates mteb reranked: the retriever's predictions, best first, cut at top-k.
    preds = json.loads(_predictions(report).read_text())["default"]["test"]
    dataset = cranfield.first_queries(MAX_QUERIES)
    assert sorted(preds) == sorted(dataset.judged_queries)
    candidates = {qid: sorted(hits.items(), key=lambda kv: -kv[1])[:TOP_K] for qid, hits in preds.items()}
    scorer = load_teacher(str(tiny_student_path), device="cpu")
    ours = evaluate_reranker(lambda q, d: scorer.score(q, d), [dataset], TOP_K, {dataset.name: candidates})
    mteb_ndcg = rows["reranker"]["tasks"]["cranfield"]
    assert mteb_ndcg == pytest.approx(ours["datasets"]["cranfield"]["ndcg@10"], abs=NDCG_TOLERANCE)
    # The retriever alone: mteb's stage-1 score against ours on its own order.
    alone = evaluate_candidates([dataset], {dataset.name: candidates}, TOP_K)
    assert rows["retriever"]["tasks"]["cranfield"] == pytest.approx(alone["datasets"]["cranfield"]["ndcg@10"],
                                                                    abs=NDCG_TOLERANCE)
    # mteb's own tools read the results back: the reranker and the retriever, each with the task.
    loaded = ResultCache(block["results"]).load_results(tasks=["cranfield"])
    names = {m.model_name for m in loaded.model_results}
    assert rows["reranker"]["model"] in names and len(names) == 2
    assert Path(report["chart"]).is_file()


def test_rerun_resumes_without_calling_models(mteb_run, monkeypatch):
    from ettin_cli.measure import mteb_eval

    config, report, out = mteb_run
    calls: list[str] = []

    def refuse(*args, **kwargs):
        calls.append("model")
        raise AssertionError("a finished task was computed again")

    monkeypatch.setattr(mteb_eval.EttinReranker, "predict", refuse)
    monkeypatch.setattr(mteb_eval, "_load_embedder", refuse)
    again = mteb_eval.evaluate_mteb(mteb_eval.MtebEvalConfig.from_dict(config.to_dict()))
    assert calls == []
    assert again["blocks"][0]["rows"] == report["blocks"][0]["rows"]

    # An interrupted run (the reranker's result missing, the predictions kept): only stage 2 runs again.
    monkeypatch.undo()
    results = Path(_block(report)["results"]) / "results"
    shutil.rmtree(next(p for p in results.iterdir() if p.name == _block(report)["rows"][1]["model"]))
    original = mteb_eval.EttinReranker.predict
    counted: list[int] = []

    def count(self, *args, **kwargs):
        counted.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(mteb_eval.EttinReranker, "predict", count)
    monkeypatch.setattr(mteb_eval, "_load_embedder", refuse)
    resumed = mteb_eval.evaluate_mteb(mteb_eval.MtebEvalConfig.from_dict(config.to_dict()))
    assert counted == [1] and calls == []
    assert resumed["blocks"][0]["rows"] == report["blocks"][0]["rows"]

    # A result file cut short by a kill while mteb wrote it: redone, not a crash on every rerun.
    written = next(results.glob(f"{_block(report)['rows'][1]['model']}/*/cranfield.json"))
    written.write_text(written.read_text()[:40])
    again = mteb_eval.evaluate_mteb(mteb_eval.MtebEvalConfig.from_dict(config.to_dict()))
    assert counted == [1, 1]
    assert again["blocks"][0]["rows"] == report["blocks"][0]["rows"]


class _Reranker:
    def __init__(self, model, path=None):
        from types import SimpleNamespace

        self.model, self.path, self.label, self.format = model, path, model.split("/")[-1], "cross-encoder"
        self.mteb_model_meta = SimpleNamespace(revision="r1")


def _protocol_report(models, *, max_queries=None, paths=None):
    from types import SimpleNamespace

    from ettin_cli.measure.mteb_eval import MtebEvalConfig, Retriever
    from ettin_cli.measure.mteb_report import build_report, load_protocol

    protocol = load_protocol()
    tasks = protocol["tasks"]
    retriever = Retriever("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "embedder")
    rerankers = [_Reranker(m, (paths or {}).get(m)) for m in models]
    # Inputs to the table, not outputs of any model: one NDCG@10 per task, different per task.
    per_task = {t: 0.40 + 0.01 * i for i, t in enumerate(tasks)}
    scores = {retriever.value: {r.label: dict(per_task) for r in rerankers}}
    config = MtebEvalConfig(models=list(models), benchmark=protocol["benchmark"], retrievers=[retriever.value],
                            top_k=protocol["top_k"], max_queries=max_queries)
    report = build_report(config, tasks, [retriever], {retriever.value: Path("x")}, rerankers, scores,
                          {retriever.value: dict(per_task)}, protocol)
    return SimpleNamespace(report=report, protocol=protocol, mean=sum(per_task.values()) / len(tasks))


def test_published_column_reads_as_a_difference(tmp_path):
    from rich.console import Console

    from ettin_cli.measure.mteb_report import report_tables

    trained = tmp_path / "runs" / "150m" / "final"
    trained.mkdir(parents=True)
    (trained / "ettin_training.json").write_text(json.dumps({"size": "150m"}))
    built = _protocol_report(["cross-encoder/ettin-reranker-17m-v1", str(trained), "someone/other-reranker"],
                             paths={str(trained): str(trained)})
    published = built.protocol["published"]
    rows = {row["model"]: row for row in built.report["blocks"][0]["rows"]}
    student = rows["ettin-reranker-17m-v1"]
    assert student["published"] == published["rerankers"]["17m"]["score"]
    assert student["difference"] == pytest.approx(built.mean - student["published"])
    assert rows["final"]["published"] == published["rerankers"]["150m"]["score"]  # by ettin_training.json's size
    assert rows["other-reranker"]["published"] is None and rows["other-reranker"]["difference"] is None
    retriever = rows["all-MiniLM-L6-v2 (retriever)"]
    assert retriever["published"] == published["retrievers"]["sentence-transformers/all-MiniLM-L6-v2"]
    console = Console(width=400, record=True)
    for table in report_tables(built.report):
        console.print(table)
    text = console.export_text()
    assert f"{student['published']:.4f}" in text and f"{student['difference']:+.4f}" in text

    # A quick look (--max-queries) is not the release's measurement: no published number, and it says why.
    quick = _protocol_report(["cross-encoder/ettin-reranker-17m-v1"], max_queries=50).report
    assert all(row["published"] is None for row in quick["blocks"][0]["rows"])
    assert "first 50 queries" in quick["published_not_comparable"]


def test_release_benchmark_tasks_and_query_counts():
    from ettin_cli.measure.mteb_report import load_protocol
    from ettin_cli.measure.mteb_tasks import expected_queries, select_tasks

    protocol = load_protocol()
    tasks = select_tasks(protocol["benchmark"])
    assert [t.metadata.name for t in tasks] == protocol["tasks"]  # the recipe file and mteb agree on the 10 tasks
    counts = [expected_queries(t) for t in tasks]
    assert all(isinstance(n, int) and n > 0 for n in counts)
    assert [t.metadata.name for t in select_tasks(protocol["benchmark"], ["scidocs", "ArguAna"])] == \
        ["SCIDOCS", "ArguAna"]


def test_cli_benchmark_path_with_a_predictions_folder(mteb_run, cranfield_cut, tiny_student_path,
                                                      tiny_qwen2_teacher_path, tmp_path, capsys):
    """`--benchmark PATH` through the CLI, the retriever being a folder of mteb predictions already made, and a
    judge-format teacher (mxbai-v2 layout) reranking through mteb beside the student."""
    _, report, _ = mteb_run
    out = tmp_path / "cli"
    code, stdout, stderr = run_cli(["eval", str(tiny_student_path), str(tiny_qwen2_teacher_path),
                                    "--benchmark", str(cranfield_cut), "--retriever", str(_predictions(report).parent),
                                    "--top-k", str(TOP_K), "--max-queries", str(MAX_QUERIES), "--device", "cpu",
                                    "-o", str(out)], capsys)
    assert code == 0, stderr
    assert "cranfield" in stdout and "published" in stdout
    written = json.loads((out / "mteb_eval.json").read_text())
    rows = written["blocks"][0]["rows"]
    assert [row["role"] for row in rows] == ["reranker", "reranker"]  # no retriever-only row for a predictions folder
    assert [row["format"] for row in rows] == ["cross-encoder", "mxbai-v2"]
    # The same candidates (the predictions folder), the same student: the same NDCG@10 as the embedder run.
    first = next(r for r in _block(report)["rows"] if r["role"] == "reranker")
    assert rows[0]["tasks"]["cranfield"] == pytest.approx(first["tasks"]["cranfield"], abs=NDCG_TOLERANCE)
    assert 0.0 <= rows[1]["tasks"]["cranfield"] <= 1.0


@pytest.mark.parametrize(("args", "needle"), [
    (["--benchmark", "MTEB(eng, v2)", "--tasks", "NoSuchTask", "--retriever", "MINILM"], "--tasks: 'NoSuchTask'"),
    (["--benchmark", "NoSuchBenchmark", "--retriever", "MINILM"], "neither an mteb benchmark nor an mteb task"),
    (["--benchmark", "CRANFIELD", "--retriever", "./no/such/embedder"], "--retriever ./no/such/embedder: no such"),
    (["--benchmark", "CRANFIELD", "--retriever", "some-org/some-embedder"], "HF_HUB_OFFLINE is set"),
    (["--benchmark", "ArguAna", "--retriever", "MINILM"], "mteb/arguana"),
    (["--benchmark", "CRANFIELD"], "needs at least one --retriever"),
    (["--benchmark", "CRANFIELD", "--retriever", "bm25"], "--retriever bm25 is `ettin eval --data`'s own"),
    (["--retriever", "MINILM"], "give --data (a BEIR folder or nanobeir) or --benchmark"),
    # No --retriever on the release's benchmark: its six (recipes/eval/mteb.yaml), the first of which is offline here.
    (["--benchmark", "MTEB(eng, v2)"], "--retriever sentence-transformers/static-retrieval-mrl-en-v1: not a local"),
])
def test_cli_errors_are_one_line(args, needle, cranfield_cut, minilm_path, tiny_student_path, tmp_path, capsys,
                                 monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [str(minilm_path) if a == "MINILM" else str(cranfield_cut) if a == "CRANFIELD" else a for a in args]
    code, _, stderr = run_cli(["eval", str(tiny_student_path), *args, "-o", str(tmp_path / "o")], capsys)
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], stderr
    assert "Traceback" not in stderr


def test_missing_mteb_extra_names_the_install(monkeypatch):
    import sys

    from ettin_cli.core.errors import EttinError
    from ettin_cli.measure.mteb_tasks import require_mteb

    monkeypatch.setitem(sys.modules, "mteb", None)
    with pytest.raises(EttinError, match=r"pip install 'ettin-cli\[mteb\]'"):
        require_mteb()


def test_make_eval_mteb_runs_the_release_protocol(tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    for size in ("17m", "150m"):  # two trained sizes; the others are not there and are left out
        (tmp_path / size / "final").mkdir(parents=True)
    venv = Path(sys.executable).parents[1]
    proc = subprocess.run(["make", "-n", "eval-mteb", f"RUNS={tmp_path}", f"VENV={venv}"], capture_output=True,
                          text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if " eval " in line)
    assert '--benchmark "MTEB(eng, v2)"' in proc.stdout and "mxbai-rerank-large-v2" in line
    assert f"{tmp_path}/17m/final" in line and f"{tmp_path}/150m/final" in line and "/1b/final" not in line
    # No --retriever: the release's six come from recipes/eval/mteb.yaml (evaluate_mteb fills them in).
    assert "--retriever" not in proc.stdout
