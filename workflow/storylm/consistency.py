"""Scores model-sampled stories for keeping the facts of the builtin story world.

A sample's text is the prompt followed by the model's continuation. Three rules:

- name_consistent: a character introduced by name keeps that name. The cast is every known
  name (storygen.NAMES) in the prompt, in the first sentence of the text, or right after 叫
  (一个叫乐乐的小男孩, 我叫乐乐, 名叫乐乐); any other known name in the text fails the rule.
- place_consistent: at most one known place (storygen.PLACES) is mentioned, so the story
  stays where it is; in particular, if the prompt names a place no other place appears.
- ended: the text ends with 。！？, or with ” right after one of them: the model finished
  the story instead of being cut off at max_new_tokens.

A sample is consistent when all three hold; every story storygen writes is. Names and
places are found left to right, longest first and without overlaps, so 小明明天 holds
小明 (not 明明) and 本杰明 is one name.
"""

import re

from storylm.storygen import NAMES, PLACES


def _longest_first(words) -> re.Pattern:
    # Alternatives are tried in order at each position, so longer words must come first.
    return re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)))


NAME_PATTERN = _longest_first(NAMES)
PLACE_PATTERN = _longest_first(PLACES)
FIRST_SENTENCE = re.compile(r"[^。！？]*[。！？]?")
ENDED = re.compile(r"[。！？]”?$")


def unique(items) -> list:
    """Items in order of first appearance, each once."""
    return list(dict.fromkeys(items))


def find_names(text: str) -> list[str]:
    return unique(m.group() for m in NAME_PATTERN.finditer(text))


def find_places(text: str) -> list[str]:
    return unique(m.group() for m in PLACE_PATTERN.finditer(text))


def introduced_names(text: str) -> list[str]:
    """Names that follow 叫 or 叫做: the story says who the character is."""
    return unique(m.group() for m in NAME_PATTERN.finditer(text)
                  if text[:m.start()].endswith(("叫", "叫做")))


def first_sentence(text: str) -> str:
    return FIRST_SENTENCE.match(text).group()


def check_story(text: str, prompt: str = "") -> dict:
    """The rules above for one sample (text includes the prompt)."""
    text = text.strip()
    names = find_names(text)
    cast = unique(find_names(prompt) + find_names(first_sentence(text)) + introduced_names(text))
    places = find_places(text)
    name_consistent = all(name in cast for name in names)
    place_consistent = len(places) <= 1
    ended = ENDED.search(text) is not None
    return {
        "names": names,
        "cast": cast,
        "places": places,
        "name_consistent": name_consistent,
        "place_consistent": place_consistent,
        "ended": ended,
        "consistent": name_consistent and place_consistent and ended,
    }


def score(samples: list[dict]) -> dict:
    """Fractions of samples ({"prompt", "text"}) that pass each rule; 0.0 for no samples."""
    checks = [check_story(s["text"], s.get("prompt", "")) for s in samples]
    n = len(checks)

    def fraction(key: str) -> float:
        return sum(c[key] for c in checks) / n if n else 0.0

    return {
        "num_samples": n,
        "consistent_fraction": fraction("consistent"),
        "name_consistent_fraction": fraction("name_consistent"),
        "place_consistent_fraction": fraction("place_consistent"),
        "ended_fraction": fraction("ended"),
    }
