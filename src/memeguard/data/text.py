"""The one gate every piece of user text passes: jsonl lines, CSV cells, recipe values, HTTP fields.

Python strings may hold lone surrogates (``"a\\ud800b"`` is valid JSON and decodes to one), which no
encoder accepts: such text passes every check and then crashes the first stage that writes it as UTF-8
(``data clean``, a prediction CSV, a JSON response) with a ``UnicodeEncodeError`` traceback. Refusing it
where it enters, naming the place, is safer than replacing it: a replacement would silently change what
the model reads and what the user wrote. The length cap keeps one line or request from making
tokenisation time and memory explode; real meme captions are a few hundred characters at most.

Only the standard library and :mod:`memeguard.errors` are imported, so the serving and recipe code can
use this module without pulling in the data stack.
"""

from __future__ import annotations

from memeguard.errors import DataError

# Hateful Memes captions are under 1,000 characters; anything far beyond is an accident or an attack.
MAX_TEXT_CHARS = 10_000


def check_text(value: object, where: str, field: str = "text", max_chars: int = MAX_TEXT_CHARS) -> str:
    """Return ``value`` if it is a string of valid Unicode of at most ``max_chars`` characters.

    ``where`` names the place (``"train.jsonl:12"``, ``"request body"``) and ``field`` the key; both
    prefix the one-line :class:`~memeguard.errors.DataError` raised otherwise.
    """
    if not isinstance(value, str):
        raise DataError(f"{where}: {field!r} must be a string, got {type(value).__name__}")
    if len(value) > max_chars:
        raise DataError(
            f"{where}: {field!r} has {len(value):,} characters, more than the {max_chars:,} allowed"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        raise DataError(
            f"{where}: {field!r} holds a lone surrogate U+{code:04X} at character {exc.start + 1}; "
            "text must be valid Unicode"
        ) from None
    return value
