"""The form in which a story is stored: the one cleaning rule of the corpus stage and the extra sets.

The corpus stage stores each story cleaned; an extra evaluation set is cleaned the same way,
so its bits per character measure text as the model was trained to read it, and one of its
stories is "in the train split" when its cleaned text equals a train story.
"""

from __future__ import annotations

import unicodedata


def clean(text: str, normalize: str | None) -> str:
    """The form in which a story is stored, compared for duplicates, and hashed for the split; "" for
    a story with nothing to read."""
    if normalize:
        text = unicodedata.normalize(normalize, text)
    text = text.strip()
    # Nothing but invisible characters (zero-width spaces and joiners, byte order marks: Unicode's
    # format characters, category Cf, between whitespace) is no story. all() stops at the first
    # visible character, so a real story costs one look.
    if all(char.isspace() or unicodedata.category(char) == "Cf" for char in text):
        return ""
    return text
