"""How much of the sampled text is copied verbatim from the training split.

train_copy_fraction is the share of the samples' character n-grams (each occurrence
counts) that also occur somewhere in the training split. A model that writes new text
scores near what unseen stories of the same corpus score; one that recites its training
stories scores near 1.

The training split of TinyStoriesChinese holds about 900M characters, far too many
n-grams to keep. The samples hold few, so the search goes the other way: the samples'
distinct n-grams become the keys of one Aho-Corasick automaton (pyahocorasick), and the
train text streams through it once, story by story. Memory depends on the samples only,
never on the size of the train split.
"""

from __future__ import annotations

from collections.abc import Iterable

import ahocorasick


def char_ngrams(text: str, n: int) -> list[str]:
    return [text[i:i + n] for i in range(len(text) - n + 1)]


def build_automaton(keys: dict[str, int]) -> ahocorasick.Automaton:
    """An automaton that reports the index of each key found (keys must not be empty: iter() needs one)."""
    automaton = ahocorasick.Automaton()
    for gram, index in keys.items():
        automaton.add_word(gram, index)
    automaton.make_automaton()
    return automaton


# A formulaic corpus repeats its common n-grams in nearly every story, and all keys have the
# same length, so nearly every train character can end a match. Matches of keys already
# found are wasted Python work (a few microseconds each); once they outnumber
# REBUILD_RATIO x the keys still missing, the automaton is rebuilt from the missing keys
# alone (about 8 microseconds a key), which leaves only the rare n-grams to match. On 6M
# characters of builtin stories a ratio of 2 took 1.2 s, 5 took 1.6 s, never rebuilding 1.5 s.
REBUILD_RATIO = 2


def found_in(keys: list[str], texts: Iterable[str]) -> bytearray:
    """found[i] = 1 when keys[i] occurs in any of texts.

    Reads texts once; stops early when every key is found.
    """
    found = bytearray(len(keys))
    missing = {gram: i for i, gram in enumerate(keys)}
    if not missing:
        return found
    automaton = build_automaton(missing)
    wasted = 0
    for text in texts:
        for _, index in automaton.iter(text):
            if found[index]:
                wasted += 1
            else:
                found[index] = 1
                missing.pop(keys[index])
        if not missing:
            break  # everything is found; the rest of the split cannot change the answer
        if wasted > REBUILD_RATIO * len(missing):
            automaton = None  # free the old one first: never two in memory
            automaton, wasted = build_automaton(missing), 0
    return found


def train_copy(groups: dict[str, list[str]], train_texts: Iterable[str], n: int) -> dict[str, dict]:
    """For each group of texts, the share of its n-grams found in `train_texts`, with the counts behind it.

    All groups share one automaton, so the train split is read once for all of them. A
    fraction is None when no text of the group is n characters long, rather than a made-up 0.
    """
    grams = {name: [gram for text in texts for gram in char_ngrams(text, n)] for name, texts in groups.items()}
    index = {gram: i for i, gram in enumerate(dict.fromkeys(g for group in grams.values() for g in group))}
    found = found_in(list(index), train_texts)
    results = {}
    for name, group in grams.items():
        copied = sum(found[index[gram]] for gram in group)
        results[name] = {"train_copy_fraction": copied / len(group) if group else None, "ngrams": len(group),
                         "ngrams_found": copied}
    return results
