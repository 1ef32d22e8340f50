"""BERT's WordPiece tokenisation in plain Python, after google-research/bert ``tokenization.py``.

Written independently of Hugging Face's tokenizers so that the tokenizer tests compare our tokenizer's
ids against the algorithm spelled out here: clean text, space out CJK characters, split on whitespace,
lower-case and strip accents (uncased), split off punctuation, then greedy longest-match WordPiece.
"""

from __future__ import annotations

import unicodedata

MAX_WORD_CHARS = 100  # longer words become [UNK]


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(cp: int) -> bool:
    ranges = [
        (0x4E00, 0x9FFF),
        (0x3400, 0x4DBF),
        (0x20000, 0x2A6DF),
        (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F),
        (0x2B820, 0x2CEAF),
        (0xF900, 0xFAFF),
        (0x2F800, 0x2FA1F),
    ]
    return any(low <= cp <= high for low, high in ranges)


def basic_tokens(text: str, lowercase: bool) -> list[str]:
    cleaned = []
    for char in text:
        cp = ord(char)
        if cp == 0 or cp == 0xFFFD or _is_control(char):
            continue
        if _is_whitespace(char):
            cleaned.append(" ")
        elif _is_cjk(cp):
            cleaned.append(f" {char} ")
        else:
            cleaned.append(char)
    tokens = []
    for word in "".join(cleaned).split():
        if lowercase:
            decomposed = unicodedata.normalize("NFD", word.lower())
            word = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
        piece = ""
        for char in word:
            if _is_punctuation(char):
                tokens += [piece, char] if piece else [char]
                piece = ""
            else:
                piece += char
        if piece:
            tokens.append(piece)
    return tokens


def wordpieces(word: str, vocab: dict[str, int]) -> list[str]:
    if len(word) > MAX_WORD_CHARS:
        return ["[UNK]"]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            candidate = word[start:end] if start == 0 else "##" + word[start:end]
            if candidate in vocab:
                pieces.append(candidate)
                break
            end -= 1
        if end == start:
            return ["[UNK]"]
        start = end
    return pieces


def encode(
    text: str, vocab: dict[str, int], lowercase: bool = True, max_length: int | None = None
) -> list[int]:
    """``[CLS] wordpieces [SEP]`` ids, the wordpieces cut so the whole fits ``max_length``."""
    pieces = [piece for word in basic_tokens(text, lowercase) for piece in wordpieces(word, vocab)]
    if max_length is not None:
        pieces = pieces[: max_length - 2]
    return [vocab["[CLS]"], *(vocab[piece] for piece in pieces), vocab["[SEP]"]]
