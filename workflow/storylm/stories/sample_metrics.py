"""Figures of a run's sampled stories that hold for any corpus (storylm.stories.consistency holds the builtin world's rules).

Every figure is measured on characters, not tokens, so runs with different tokenizers compare.

- finished_fraction: stories that ended because the model emitted its end-of-text token,
  not because they hit max_new_tokens.
- repeated_4gram_fraction: repetition within a story. Of all character 4-grams of all
  stories (prompt included: a story that repeats its opening repeats itself), the share that
  repeat an earlier 4-gram of the same story. 0 for a story without a repeat; a model stuck
  in a loop goes towards 1.
- distinct_2: diversity across the run (Li et al. 2016, "distinct-n"): distinct character
  bigrams over all bigrams of the continuations. The prompt is left out, because every
  sample of a prompt shares it. It falls as text is added (a corpus has only so many
  bigrams): on the default model it measured 0.54 on 10 stories, 0.15 on 100, 0.10 on
  200 (workflow/benchmarks/sample_figure_spread.py), so compare runs at equal
  sample.num_figure_samples and max_new_tokens only.
- train_copy_fraction: see storylm.stories.train_copy; measured on the continuations too, since
  the prompt is given, not written by the model. reference_copy_fraction is the same measure
  on stories of the corpus that are not in the train split (the val split): what an
  original story of this corpus shares with the train split anyway. A model copies beyond
  the corpus's own formulas by the margin between the two.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from storylm.stories.train_copy import char_ngrams, train_copy


def continuation(text: str, prompt: str) -> str:
    """What the model wrote after the prompt (a sample's text starts with its prompt)."""
    return text.removeprefix(prompt)


def repeated_ngram_counts(text: str, n: int) -> tuple[int, int]:
    """(n-grams that repeat an earlier one of the text, all n-grams of the text)."""
    grams = char_ngrams(text, n)
    return len(grams) - len(set(grams)), len(grams)


def repeated_ngram_fraction(texts: Iterable[str], n: int = 4) -> float | None:
    """Pooled over the texts, so a long looping story weighs more than a short one."""
    repeated = total = 0
    for text in texts:
        r, t = repeated_ngram_counts(text, n)
        repeated, total = repeated + r, total + t
    return repeated / total if total else None


def distinct_n(texts: Iterable[str], n: int = 2) -> float | None:
    counts = Counter(gram for text in texts for gram in char_ngrams(text, n))
    total = sum(counts.values())
    return len(counts) / total if total else None


def figures(samples: list[dict], train_texts: Iterable[str], copy_n: int,
            reference_texts: list[str] | None = None) -> dict:
    """The figures of samples ({"prompt", "text", "finished"}); train_texts is read once.

    reference_texts (e.g. val stories, which are not in the train split) get the same copy
    measure, as the share a new story of the corpus shares with the train split anyway.
    """
    continuations = [continuation(s["text"], s["prompt"]) for s in samples]
    groups = {"samples": continuations, "reference": reference_texts or []}
    copy = train_copy(groups, train_texts, copy_n)
    n = len(samples)
    return {
        "num_samples": n,
        "finished_fraction": sum(bool(s["finished"]) for s in samples) / n if n else None,
        "repeated_4gram_fraction": repeated_ngram_fraction((s["text"] for s in samples), 4),
        "distinct_2": distinct_n(continuations, 2),
        "train_copy_fraction": copy["samples"]["train_copy_fraction"],
        "train_copy_n": copy_n,
        "train_copy_ngrams": copy["samples"]["ngrams"],
        "reference_copy_fraction": copy["reference"]["train_copy_fraction"],
        "reference_stories": len(reference_texts or []),
        "continuation_chars": sum(map(len, continuations)),
    }
