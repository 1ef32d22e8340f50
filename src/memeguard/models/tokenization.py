"""Tokenizers from local files only (no hub access): BERT WordPiece (cased/uncased) and RoBERTa BPE.

``load_tokenizer(spec)`` accepts
* a directory holding ``vocab.txt`` (BERT) or ``vocab.json`` + ``merges.txt`` (RoBERTa), or
  ``tokenizer.json``;
* a path to a ``vocab.txt`` file;
* ``"bert-base-uncased"`` / ``"bert-large-uncased"``: the standard 30,522-token uncased WordPiece vocabulary,
  shipped in ``memeguard/assets`` (or the file in ``$MEMEGUARD_BERT_UNCASED_VOCAB``).
Cased vocabularies (UNITER's bert-large-cased) must be given as a local path, or via
``$MEMEGUARD_BERT_CASED_VOCAB``.

BERT vocabularies get the Rust-backed ``BertTokenizerFast`` (in transformers 5 the same class as
``BertTokenizer``): the tests check its ids against a plain-Python WordPiece reference.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from memeguard.errors import ConfigError

UNCASED_NAMES = {"bert-base-uncased", "bert-large-uncased"}
CASED_NAMES = {"bert-base-cased", "bert-large-cased"}
# bert-base-uncased's vocab.txt (Apache-2.0, see assets/NOTICE): every uncased model here uses it.
UNCASED_VOCAB_ASSET = Path(__file__).resolve().parent.parent / "assets" / "bert-base-uncased-vocab.txt"


def default_uncased_vocab() -> Path:
    """The bert-base-uncased vocab.txt: ``$MEMEGUARD_BERT_UNCASED_VOCAB`` if set, else the packaged copy."""
    override = os.environ.get("MEMEGUARD_BERT_UNCASED_VOCAB")
    return Path(override) if override else UNCASED_VOCAB_ASSET


def read_wordpiece_vocab(path: str | os.PathLike[str]) -> dict[str, int]:
    """vocab.txt -> {token: line index}; the index is the token id."""
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            token = line.rstrip("\n")
            vocab.setdefault(token, index)
    return vocab


def _bert(vocab_path: str | os.PathLike[str], lowercase: bool) -> Any:
    from transformers import BertTokenizerFast

    if not Path(vocab_path).is_file():
        raise ConfigError(f"{vocab_path}: vocabulary file not found")
    return BertTokenizerFast(vocab=read_wordpiece_vocab(vocab_path), do_lower_case=lowercase)


@functools.lru_cache(maxsize=16)
def _load(spec: str, lowercase: bool | None) -> Any:
    from transformers import PreTrainedTokenizerFast, RobertaTokenizer

    if spec in UNCASED_NAMES:
        return _bert(default_uncased_vocab(), True)
    if spec in CASED_NAMES:
        override = os.environ.get("MEMEGUARD_BERT_CASED_VOCAB")
        if not override:
            raise ConfigError(
                f"tokenizer {spec!r} needs a local cased vocab.txt: "
                "pass its path or set MEMEGUARD_BERT_CASED_VOCAB"
            )
        return _bert(override, False)
    path = Path(spec)
    if path.is_file() and path.name.endswith(".txt"):
        return _bert(path, True if lowercase is None else lowercase)
    if path.is_dir():
        if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            import json

            vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
            merges = [
                tuple(line.split())
                for line in (path / "merges.txt").read_text(encoding="utf-8").splitlines()
                if line and not line.startswith("#version")
            ]
            return RobertaTokenizer(vocab=vocab, merges=merges)
        if (path / "vocab.txt").is_file():
            do_lower = (
                lowercase if lowercase is not None else "uncased" in path.name or "cased" not in path.name
            )
            return _bert(path / "vocab.txt", do_lower)
        if (path / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    raise ConfigError(
        f"cannot load tokenizer {spec!r}: expected {sorted(UNCASED_NAMES)}, a vocab.txt, "
        "or a directory with vocab.txt / vocab.json+merges.txt / tokenizer.json"
    )


def load_tokenizer(spec: str | os.PathLike[str] = "bert-base-uncased", lowercase: bool | None = None) -> Any:
    """A Hugging Face tokenizer built from local files; cached per (spec, lowercase)."""
    return _load(str(spec), lowercase)
