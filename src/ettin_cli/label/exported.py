"""Score with an exported reranker (ONNX or OpenVINO) without torch: tokenizers + onnxruntime/openvino + numpy.

`ettin export` writes the whole scorer (encoder, pooling and head) as one graph whose output is the raw score,
so a runtime outside PyTorch needs only the tokenizer and that graph. `ExportedCrossEncoder` gives it the
Sentence Transformers `CrossEncoder` shape (`predict(pairs)`, `rank(query, documents)`) and the teachers'
`.score(queries, documents)` interface, so `ettin bench` and the parity checks drive it like any other scorer.

This module must never import torch (a test runs it with torch made unimportable): it is the route for
deployments that cannot ship PyTorch. The tokenizer comes from the model folder's `tokenizer.json` (the fast
tokenizer Sentence Transformers itself uses), with padding to the longest pair of a batch and longest-first
truncation at the model's max length, exactly as `CrossEncoder.predict` tokenizes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ettin_cli.core.errors import EttinError
from ettin_cli.core.files import read_json_object

ONNX_DIR = "onnx"
OPENVINO_DIR = "openvino"
GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Pairs per forward pass: throughput on CPU flattens out well below this, and memory stays small.
DEFAULT_BATCH_SIZE = 32


def model_max_length(model_dir: str | Path) -> int:
    """The token cap `CrossEncoder` applies: `max_seq_length` of sentence_bert_config.json when saved, else the
    tokenizer's `model_max_length` capped by the model's positions."""
    folder = Path(model_dir)
    st_cap = read_json_object(folder / "sentence_bert_config.json").get("max_seq_length")
    if isinstance(st_cap, int) and st_cap > 0:  # Sentence Transformers' own setting wins when it is saved
        return st_cap
    tok = read_json_object(folder / "tokenizer_config.json")
    config = read_json_object(folder / "config.json")
    limits = [int(v) for v in (tok.get("model_max_length"), config.get("max_position_embeddings"))
              if isinstance(v, (int, float)) and 0 < v < 10**7]
    if not limits:
        raise EttinError(f"{folder}: no model_max_length in tokenizer_config.json nor max_position_embeddings "
                         "in config.json")
    return min(limits)


def load_tokenizer(model_dir: str | Path, max_length: int | None = None) -> Any:
    """The model's fast tokenizer (`tokenizer.json`), set to pad to the longest pair and cut longest-first."""
    from tokenizers import Tokenizer

    folder = Path(model_dir)
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise EttinError(f"{folder}: no tokenizer.json (an exported model needs the fast tokenizer's file)")
    tokenizer = Tokenizer.from_file(str(path))
    tok_config = read_json_object(folder / "tokenizer_config.json")
    pad_token = tok_config.get("pad_token")
    pad_token = pad_token.get("content") if isinstance(pad_token, dict) else pad_token
    pad_id = tokenizer.token_to_id(pad_token) if isinstance(pad_token, str) else None
    if pad_id is None:
        raise EttinError(f"{folder}: the tokenizer has no pad token (tokenizer_config.json pad_token)")
    # tokenizer.json may carry the fixed-length padding of the last save: batches pad to their longest pair here.
    tokenizer.no_padding()
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token,
                             pad_type_id=int(tok_config.get("pad_token_type_id", 0) or 0),
                             direction=str(tok_config.get("padding_side", "right")))
    tokenizer.enable_truncation(max_length or model_max_length(folder), strategy="longest_first",
                                direction=str(tok_config.get("truncation_side", "right")))
    return tokenizer


def _activation(model_dir: Path) -> Callable[[Any], Any]:
    """The CrossEncoder's activation (identity for Ettin students: raw scores), as numpy."""
    import numpy as np

    name = str(read_json_object(model_dir / "config_sentence_transformers.json").get("activation_fn") or "Identity")
    if name.endswith("Identity"):
        return lambda x: x
    if name.endswith("Sigmoid"):
        return lambda x: 1.0 / (1.0 + np.exp(-x))
    raise EttinError(f"{model_dir}: activation {name} is not supported by the exported-model loader "
                     "(Identity or Sigmoid)")


def _local_copy(model: str | Path, file: str) -> Path:
    """A local model folder as is; a Hub id (`org/name`) fetched with huggingface_hub: tokenizer, configs, `file`."""
    path = Path(model)
    if path.is_dir() or Path(file).is_absolute() or str(model).count("/") != 1 or str(model).startswith((".", "/")):
        return path
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", file] + ([file[:-4] + ".bin"] if file.endswith(".xml") else [])
    return Path(snapshot_download(str(model), allow_patterns=patterns))


class ExportedCrossEncoder:
    """A CrossEncoder-shaped scorer over one exported graph (`onnx/*.onnx` or `openvino/*.xml`).

    `model_dir` is the model folder (tokenizer files at its top) or a Hub id (only the tokenizer, configs and
    `file` are downloaded); `file` is the graph inside it, relative (`onnx/model.onnx`) or absolute. The backend
    follows the file's suffix.
    """

    format = "exported"

    def __init__(self, model_dir: str | Path, file: str | Path = f"{ONNX_DIR}/model.onnx", *,
                 max_length: int | None = None, threads: int | None = None) -> None:
        import numpy as np

        self.model_dir = _local_copy(model_dir, str(file))
        path = Path(file)
        self.path = path if path.is_absolute() else self.model_dir / path
        if not self.path.is_file():
            raise EttinError(f"{self.path}: no such exported model file (run `ettin export {self.model_dir}`)")
        self.name = f"{self.model_dir.name}:{self.path.name}"
        self.max_length = max_length or model_max_length(self.model_dir)
        self.tokenizer = load_tokenizer(self.model_dir, self.max_length)
        self.activation = _activation(self.model_dir)
        self.on_batch: Callable[[int], None] | None = None
        self._np = np
        if self.path.suffix == ".onnx":
            self.backend = "onnxruntime"
            self._run, self.input_names = self._onnxruntime(threads)
        elif self.path.suffix == ".xml":
            self.backend = "openvino"
            self._run, self.input_names = self._openvino(threads)
        else:
            raise EttinError(f"{self.path}: expected an .onnx or OpenVINO .xml file")
        unknown = [n for n in self.input_names if n not in GRAPH_INPUTS]
        if unknown:
            raise EttinError(f"{self.path}: unexpected graph inputs {unknown} (expected some of {list(GRAPH_INPUTS)})")

    def _onnxruntime(self, threads: int | None) -> tuple[Callable[[dict], Any], list[str]]:
        try:
            import onnxruntime as ort
        except ImportError:
            raise EttinError('onnxruntime is not installed: pip install "ettin-cli[export]"') from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        return (lambda feeds: session.run(None, feeds)[0]), [i.name for i in session.get_inputs()]

    def _openvino(self, threads: int | None) -> tuple[Callable[[dict], Any], list[str]]:
        try:
            import openvino as ov
        except ImportError:
            raise EttinError('openvino is not installed: pip install "ettin-cli[export]"') from None
        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        # fp32 inference: OpenVINO's CPU plugin may otherwise run bf16 on AMX/avx512_bf16 machines.
        config["INFERENCE_PRECISION_HINT"] = "f32"
        compiled = ov.Core().compile_model(str(self.path), "CPU", config)
        names = [port.get_any_name() for port in compiled.inputs]
        request = compiled.create_infer_request()
        return (lambda feeds: request.infer(feeds)[compiled.outputs[0]]), names

    # ---------------------------------------------------------------------------------------------- scoring
    def _feeds(self, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
        np = self._np
        encodings = self.tokenizer.encode_batch([(str(q), str(d)) for q, d in pairs])
        columns = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                   "token_type_ids": [e.type_ids for e in encodings]}
        return {name: np.asarray(columns[name], dtype=np.int64) for name in self.input_names}

    def raw_scores(self, pairs: Sequence[tuple[str, str]], batch_size: int = DEFAULT_BATCH_SIZE) -> Any:
        """Raw scores (the graph's output, before any activation), float32, in the order of `pairs`.

        Pairs are scored in windows of similar length (fewer pad tokens), and put back in input order.
        """
        np = self._np
        if batch_size < 1:
            raise EttinError(f"batch size must be at least 1, got {batch_size}")
        lengths = np.asarray([len(q) + len(d) for q, d in pairs])
        order = np.argsort(-lengths, kind="stable")
        out = np.empty(len(pairs), dtype=np.float32)
        for start in range(0, len(pairs), batch_size):
            idx = order[start:start + batch_size]
            scores = np.asarray(self._run(self._feeds([pairs[i] for i in idx])), dtype=np.float32).reshape(-1)
            out[idx] = scores
            if self.on_batch is not None:
                self.on_batch(len(idx))
        return out

    def predict(self, pairs: Sequence[tuple[str, str]] | tuple[str, str], batch_size: int = DEFAULT_BATCH_SIZE,
                convert_to_numpy: bool = True, **_: Any) -> Any:
        """`CrossEncoder.predict`: one score per (query, document) pair, after the model's activation."""
        single = isinstance(pairs, tuple) and len(pairs) == 2 and isinstance(pairs[0], str)
        batch = [pairs] if single else list(pairs)
        scores = self.activation(self.raw_scores(batch, batch_size)).astype(self._np.float32)
        if single:
            return scores[0]
        return scores if convert_to_numpy else scores.tolist()

    def rank(self, query: str, documents: Sequence[str], top_k: int | None = None, return_documents: bool = False,
             batch_size: int = DEFAULT_BATCH_SIZE, **_: Any) -> list[dict[str, Any]]:
        """`CrossEncoder.rank`: `[{"corpus_id", "score"(, "text")}]`, best first, ties in input order."""
        scores = self.predict([(query, d) for d in documents], batch_size=batch_size)
        order = sorted(range(len(documents)), key=lambda i: -float(scores[i]))
        results = []
        for i in order[:top_k]:
            hit: dict[str, Any] = {"corpus_id": i, "score": float(scores[i])}
            if return_documents:
                hit["text"] = documents[i]
            results.append(hit)
        return results

    def score(self, queries: Sequence[str], documents: Sequence[str], batch_size: int | None = None,
              max_tokens_per_batch: int | None = None) -> Any:
        """The teachers' interface (`label.base`): raw scores of aligned queries and documents."""
        if len(queries) != len(documents):
            raise EttinError(f"{len(queries)} queries but {len(documents)} documents")
        return self.raw_scores(list(zip(queries, documents, strict=True)), batch_size or DEFAULT_BATCH_SIZE)
