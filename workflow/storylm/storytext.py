"""The form in which a story is stored: the one cleaning rule of the corpus stage and the extra sets.

The corpus stage stores each story cleaned; an extra evaluation set is cleaned the same way,
so its bits per character measure text as the model was trained to read it, and one of its
stories is "in the train split" when its cleaned text equals a train story.
"""

from __future__ import annotations

import unicodedata


def clean(text: str, normalize: str | None) -> str:
    """The form in which a story is stored, compared for duplicates, and hashed for the split."""
    if normalize:
        text = unicodedata.normalize(normalize, text)
    return text.strip()
