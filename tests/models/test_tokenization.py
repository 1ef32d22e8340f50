"""The packaged bert-base-uncased vocabulary and the fast WordPiece tokenizer built from it."""

from __future__ import annotations

import hashlib

import pytest
import torch
from wordpiece_reference import encode

from memeguard.errors import ConfigError
from memeguard.models import create_model
from memeguard.models.base import RegionTextProcessor, VLConfig
from memeguard.models.tokenization import (
    UNCASED_VOCAB_ASSET,
    default_uncased_vocab,
    load_tokenizer,
    read_wordpiece_vocab,
)

# The sha256 of bert-base-uncased's vocab.txt, as recorded in assets/NOTICE.
UNCASED_VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"

TEXTS = [
    "when you finally get the joke",
    "Café naïve RÉSUMÉ, Ångström über façade",
    'don\'t!!! (really?) #hashtag @user $5.99 -- 50% off... "quoted" [brackets] {braces}',
    "emoji 😀🔥 and symbols ™ © ° ½ → ∞",
    "中文字符 and 日本語 mixed with latin",
    "Ελληνικά кириллица עברית العربية",
    "tabs\tand\nnewlines\r\nand\u00a0no-break\u2003spaces",
    "control\u0007chars\u200band zero\ufeffwidth",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "x" * 101 + " short " + "y" * 100,
    "",
    "   ",
    "UPPER lower MiXeD 123 4.5e6 1,000,000",
]


def test_packaged_vocabulary_is_bert_base_uncased(monkeypatch):
    monkeypatch.delenv("MEMEGUARD_BERT_UNCASED_VOCAB", raising=False)
    assert default_uncased_vocab() == UNCASED_VOCAB_ASSET
    data = UNCASED_VOCAB_ASSET.read_bytes()
    assert hashlib.sha256(data).hexdigest() == UNCASED_VOCAB_SHA256
    vocab = read_wordpiece_vocab(UNCASED_VOCAB_ASSET)
    assert len(vocab) == 30522
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert [vocab[token] for token in specials] == [0, 100, 101, 102, 103]


def test_environment_variable_overrides_the_packaged_vocabulary(tmp_path, monkeypatch):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "##s"]) + "\n", encoding="utf-8")
    monkeypatch.setenv("MEMEGUARD_BERT_UNCASED_VOCAB", str(path))
    assert default_uncased_vocab() == path


def test_uncased_tokenizer_is_fast_and_matches_the_wordpiece_reference():
    tokenizer = load_tokenizer("bert-base-uncased")
    assert tokenizer.is_fast
    vocab = read_wordpiece_vocab(UNCASED_VOCAB_ASSET)
    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == encode(text, vocab), text


@pytest.mark.parametrize("max_length", [2, 5, 16])
def test_processor_truncation_matches_the_reference(max_length):
    config = VLConfig(max_text_length=max_length)
    processor = RegionTextProcessor(load_tokenizer("bert-base-uncased"), config)
    batch = processor.tokenize(TEXTS)
    vocab = read_wordpiece_vocab(UNCASED_VOCAB_ASSET)
    for row, text in enumerate(TEXTS):
        expected = encode(" ".join(text.split()), vocab, max_length=max_length)
        length = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :length].tolist() == expected, text
        assert not batch["input_ids"][row, length:].any()  # [PAD] is id 0
    assert batch["input_ids"].shape[1] <= max_length


def test_cased_vocabulary_from_a_file_keeps_case(tmp_path):
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Hello", "hello", "world", "!", "##s"]
    path = tmp_path / "cased" / "vocab.txt"
    path.parent.mkdir()
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = load_tokenizer(path.parent)
    text = "Hello hello worlds! Héllo"
    assert tokenizer(text)["input_ids"] == encode(text, vocab, lowercase=False)
    assert tokenizer(text)["input_ids"] != encode(text, vocab, lowercase=True)


def test_unknown_tokenizer_and_missing_cased_vocabulary_are_config_errors(monkeypatch):
    monkeypatch.delenv("MEMEGUARD_BERT_CASED_VOCAB", raising=False)
    with pytest.raises(ConfigError, match="MEMEGUARD_BERT_CASED_VOCAB"):
        load_tokenizer("bert-large-cased")
    with pytest.raises(ConfigError, match="cannot load tokenizer"):
        load_tokenizer("no-such-tokenizer")


def test_default_model_processor_uses_the_packaged_vocabulary():
    model = create_model("visualbert-tiny", visual_feat_dim=8)
    tokenizer = model.build_processor().tokenizer
    assert tokenizer.vocab_size == 30522
    assert torch.equal(
        torch.tensor(tokenizer("a dog")["input_ids"]),
        torch.tensor(encode("a dog", read_wordpiece_vocab(UNCASED_VOCAB_ASSET))),
    )
