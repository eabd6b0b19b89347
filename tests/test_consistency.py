"""The consistency checker: its rules on hand-written samples, on every generated story,
and on generated stories corrupted so that exactly one rule must fail."""

import random

import pytest

from storylm.consistency import check_story, find_names, find_places, first_sentence, score
from storylm.storygen import NAMES, PLACES, generate_stories


@pytest.fixture(scope="module")
def stories() -> list[dict]:
    return list(generate_stories(6000, 1234)) + list(generate_stories(2000, 99))


# -- finding names and places -------------------------------------------------------------

def test_longest_name_wins_and_is_counted_once():
    assert find_names("小明明天去公园。") == ["小明"]
    assert find_names("本杰明明白了。") == ["本杰明"]
    assert find_names("明明和小明是好朋友。") == ["明明", "小明"]
    assert find_names("安娜和安安，安娜和安安。") == ["安娜", "安安"]
    assert find_names("他拿着一本书。") == []


def test_places():
    assert find_places("他们从小河边走到了公园，又回到小河边。") == ["小河边", "公园"]
    assert find_places("他们回家了。") == []


def test_first_sentence():
    assert first_sentence("莉莉说：“你好！”小明笑了。") == "莉莉说：“你好！"
    assert first_sentence("没有结束") == "没有结束"


# -- the rules on hand-written samples ------------------------------------------------------

def test_name_must_be_introduced():
    assert not check_story("从前，有一个叫莉莉的小女孩。莉莉和小明去公园玩。")["name_consistent"]
    assert check_story("从前，有一个叫莉莉的小女孩。她遇到了一个叫小明的小男孩。小明笑了。")["name_consistent"]
    assert check_story("莉莉问：“你叫什么名字？”“我叫乐乐。”乐乐说。")["name_consistent"]
    assert check_story("莉莉和小明是好朋友。小明笑了，莉莉也笑了。")["name_consistent"]


def test_names_in_the_prompt_belong_to_the_cast():
    prompt = "小明哭了。莉莉走了过来"
    result = check_story(prompt + "，说：“别哭。”小明不哭了。", prompt)
    assert result["name_consistent"] and result["cast"] == ["小明", "莉莉"]
    assert not check_story(prompt + "。莉莉说：“别哭。”", "")["name_consistent"]


def test_one_place_only():
    prompt = "在森林里"
    result = check_story(prompt + "，住着一只小兔子。有一天，它跑到了海边。", prompt)
    assert not result["place_consistent"] and result["places"] == ["森林", "海边"]
    assert check_story(prompt + "，住着一只小兔子。它在森林里跑来跑去。", prompt)["place_consistent"]


@pytest.mark.parametrize("text, ended", [
    ("他们高高兴兴地回家了。", True),
    ("小明大声说：“我做到了！”", True),
    ("你在哪里？", True),
    ("他们高高兴兴地回", False),
    ("小明大声说：“我做到", False),
    ("小明说：“好”", False),
    ("", False),
])
def test_ended(text, ended):
    assert check_story(text)["ended"] is ended


def test_consistent_needs_every_rule():
    assert check_story("从前，有一个叫莉莉的小女孩。莉莉去公园玩。")["consistent"]
    assert not check_story("从前，有一个叫莉莉的小女孩。莉莉去公园玩")["consistent"]


def test_score_fractions():
    samples = [
        {"prompt": "从前，有一个叫莉莉的小女孩", "text": "从前，有一个叫莉莉的小女孩。莉莉去公园玩。"},  # all good
        {"prompt": "在森林里", "text": "在森林里，有一只小熊。小熊去了海边。"},                  # two places
        {"prompt": "有一天，小明和他的狗", "text": "有一天，小明和他的狗去公园。莉莉来了。"},     # new name
        {"prompt": "有一天，小明和他的狗", "text": "有一天，小明和他的狗去公园"},                 # cut off
    ]
    assert score(samples) == {
        "num_samples": 4,
        "consistent_fraction": 0.25,
        "name_consistent_fraction": 0.75,
        "place_consistent_fraction": 0.75,
        "ended_fraction": 0.75,
    }


def test_score_of_nothing():
    assert score([]) == {"num_samples": 0, "consistent_fraction": 0.0, "name_consistent_fraction": 0.0,
                         "place_consistent_fraction": 0.0, "ended_fraction": 0.0}


# -- generated stories ----------------------------------------------------------------------

def test_every_generated_story_is_consistent(stories):
    for story in stories:
        result = check_story(story["text"])
        assert result["consistent"], (result, story["text"])
        # The checker finds exactly the characters and the place the generator used.
        assert result["names"] == story["names"], story["text"]
        assert result["places"] == [story["place"]], story["text"]


def test_score_of_generated_stories_with_prompts(stories):
    rng = random.Random(0)
    samples = [{"prompt": s["text"][:rng.randint(4, 15)], "text": s["text"]} for s in stories[:1000]]
    result = score(samples)
    assert result["num_samples"] == 1000
    assert result["consistent_fraction"] == 1.0
    assert result["name_consistent_fraction"] == result["place_consistent_fraction"] == 1.0
    assert result["ended_fraction"] == 1.0


def swap_a_later_name(text: str, name: str, new_name: str) -> str | None:
    """Replace the last mention of name that is neither in the first sentence nor after 叫."""
    start = len(first_sentence(text))
    at = text.rfind(name)
    while at >= start:
        if not text[:at].endswith("叫"):
            return text[:at] + new_name + text[at + len(name):]
        at = text.rfind(name, 0, at)
    return None


def test_swapped_name_fails_only_the_name_rule(stories):
    rng = random.Random(1)
    swapped = 0
    for story in stories[:500]:
        new_name = rng.choice([n for n in NAMES if n not in story["names"]])
        text = swap_a_later_name(story["text"], story["names"][0], new_name)
        if text is None:
            continue
        swapped += 1
        result = check_story(text)
        assert not result["name_consistent"] and new_name in result["names"], text
        assert result["place_consistent"] and result["ended"]
        assert not result["consistent"]
    assert swapped >= 490  # the hero is named again after the first sentence in nearly every story


def test_second_place_fails_only_the_place_rule(stories):
    rng = random.Random(2)
    for story in stories[:500]:
        other = rng.choice([p for p in PLACES if p != story["place"]])
        first = first_sentence(story["text"])
        text = first + f"后来，他们又去了{other}。" + story["text"][len(first):]
        result = check_story(text)
        assert not result["place_consistent"] and set(result["places"]) == {story["place"], other}, text
        assert result["name_consistent"] and result["ended"]
        assert not result["consistent"]


def test_cut_story_fails_only_the_ending_rule(stories):
    rng = random.Random(3)
    for story in stories[:500]:
        text = story["text"]
        # Cut after the first sentence and inside a sentence, not right after one.
        cuts = [i for i in range(len(first_sentence(text)) + 1, len(text)) if text[i - 1] not in "。！？”"]
        cut = rng.choice(cuts)
        result = check_story(text[:cut])
        assert not result["ended"], text[:cut]
        assert not result["consistent"]
        # A prefix holds a subset of the same names and at most the one place.
        assert result["place_consistent"] and result["name_consistent"]
