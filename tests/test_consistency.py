"""The story checker: each rule on the failures found in model samples, its agreement with a
hand-labelled set of model samples, every generated story passing, generated stories
corrupted so that one rule must fail, and the command."""

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from storylm.stories.consistency import (
    RULES,
    check_story,
    find_names,
    find_objects,
    find_places,
    first_sentence,
    quotes,
    score,
)
from storylm.stories.storygen import NAMES, PLACES, generate_stories

REPO = Path(__file__).resolve().parents[1]
LABELLED = REPO / "tests" / "data" / "labelled_samples.jsonl"
# The checker against the hand labels (docs/evaluation.md); the target is at least 90% agreement.
AGREEMENT = {"samples": 216, "agree": 215, "false_positives": 1, "false_negatives": 0}


@pytest.fixture(scope="module")
def stories() -> list[dict]:
    return list(generate_stories(2000, 1234)) + list(generate_stories(1000, 99))


def failed(text: str, prompt: str = "") -> list[str]:
    """The rules a short hand-written story fails, besides being short (tested on its own below)."""
    return [rule for rule in check_story(text, prompt)["failed_rules"] if rule != "long_enough"]


# -- finding names, places, objects and speakers ------------------------------------------

def test_longest_name_wins_and_is_counted_once():
    assert find_names("小明明天去公园。") == ["小明"]
    assert find_names("本杰明明白了。") == ["本杰明"]
    assert find_names("明明和小明是好朋友。") == ["明明", "小明"]
    assert find_names("安娜和安安，安娜和安安。") == ["安娜", "安安"]
    assert find_names("他拿着一本书。") == []


def test_places():
    assert find_places("他们从小河边走到了公园，又回到小河边。") == ["小河边", "公园"]
    assert find_places("他们回家了。") == []


def test_objects_by_full_or_short_name_but_not_the_boat_to_look_beside():
    assert find_objects("莉莉有一个红色小球。小球不见了！") == ["红色小球"]
    assert find_objects("她在一只小木船旁边找了找。") == []
    assert find_objects("小木船不见了，布娃娃也不见了。") == ["小木船", "布娃娃"]


def test_first_sentence():
    assert first_sentence("莉莉说：“你好！”小明笑了。") == "莉莉说：“你好！"
    assert first_sentence("没有结束") == "没有结束"


@pytest.mark.parametrize("text, speakers", [
    ("莉莉笑着说：“你好！”", ["莉莉"]),
    ("“你好！”莉莉笑着说。", ["莉莉"]),
    ("小明拍拍莉莉说：“别放弃！”", ["小明"]),                       # the first one named, not the last
    ("小狗蹭了蹭小明，好像在说：“别怕，有我呢！”", ["小狗"]),
    ("小明说：“明天还来吗？”“好！”莉莉大声回答。", ["小明", "莉莉"]),
    ("“我叫莉莉。”小女孩小声说。", ["小女孩"]),
    ("“你好！”", [None]),
])
def test_speakers(text, speakers):
    assert [q.speaker for q in quotes(text)] == speakers


# -- each rule on the failures seen in model samples (issue 9) -----------------------------

def test_a_character_paired_with_or_helping_themself():
    assert failed("从前，有一个叫莉莉的小女孩。她遇到了一个叫天天的小男孩。从那以后，莉莉和莉莉成了最好的朋友。") == ["self_pair"]
    assert failed("小明和天天在公园里玩。天天的鞋带松了。小明帮小明系好了鞋带。") == ["self_pair"]
    assert failed("小明和天天在公园里玩。天天的鞋带松了。小明帮天天系好了鞋带。") == []


def test_a_character_thanking_themself():
    story = "天天和小明是好朋友。小明帮天天把风筝取了下来。{}"
    assert failed(story.format("天天笑着说：“谢谢你，天天！”")) == ["self_address"]
    assert failed(story.format("“谢谢你，天天！”天天笑着说。")) == ["self_address"]
    assert failed(story.format("“天天，我来帮你吧！”天天大声说。")) == ["self_address"]
    assert failed(story.format("天天笑着说：“谢谢你，小明！”")) == []


def test_a_new_girl_who_takes_the_heroines_name():
    start = "从前，有一个叫莉莉的小女孩。这时，一个小女孩从草丛里探出头来。莉莉笑着问：“你叫什么名字？”"
    assert failed(start + "“我叫莉莉。”小女孩小声说。") == ["self_intro"]
    assert failed(start + "“我叫朵朵。”小女孩小声说。莉莉和朵朵成了好朋友。") == []
    assert failed("从前，有一个叫莉莉的小女孩。小明说：“你好！我叫莉莉。”") == ["name_consistent", "self_intro"]
    assert failed("从前，有一个叫莉莉的小女孩。这时，一个叫莉莉的小女孩走了过来。") == ["self_intro"]


def test_a_girl_called_he():
    assert failed("从前，有一个叫莉莉的小女孩。他非常喜欢唱歌。") == ["gender_consistent"]
    assert failed("从前，有一个叫莉莉的小男孩。") == ["gender_consistent"]
    assert failed("从前，有一个叫小明的小男孩。她有一只小狗。") == ["gender_consistent"]
    # With a boy and a girl around, either pronoun can be read right.
    assert failed("莉莉和小明是好朋友。小明帮莉莉捡起了球，她笑了。") == []
    # Dialogue speaks of others, and an animal's name has no gender to keep.
    assert failed("从前，有一个叫莉莉的小女孩。莉莉说：“他是我的哥哥。”") == []
    assert failed("在森林里，住着一只叫莉莉的小熊。他最喜欢吃蜂蜜。") == []


def test_a_lost_doll_found_as_a_scarf():
    story = "莉莉有一个布娃娃，她非常喜欢它。突然，莉莉发现她的布娃娃不见了！最后，她在草丛里找到了{}。"
    assert failed(story.format("围巾")) == ["object_consistent"]
    assert failed(story.format("布娃娃")) == []
    # A thing found that was never lost is found as what it was called.
    assert failed("天天说：“别着急，我帮你一起找。”天天弯下腰一看，小汽车就在草丛里！“谢谢你帮我找到了小铃铛！”") \
        == ["object_consistent"]
    # With nothing lost or found, more than one object is just more things.
    assert failed("莉莉有一个布娃娃，还有一条绿围巾。") == []


def test_a_dog_that_comes_home_a_cat():
    story = "有一天，小明和他的狗去公园玩。小明和{}一起追蝴蝶。"
    assert failed(story.format("小猫")) == ["animal_consistent"]
    assert failed(story.format("小狗")) == []
    # A named character's kind is not the one extra animal, and birds are scenery.
    assert failed("在森林里，住着一只叫莉莉的小兔子。小鸟在树枝上唱歌。莉莉帮小乌龟翻了过来。") == []


def test_a_boy_who_says_he_is_a_girl():
    assert failed("东东心里有点害怕。东东说：“天黑了，我有点怕。”东东骄傲地说：“我是一个勇敢的小女孩！”") == ["gender_consistent"]
    assert failed("东东心里有点害怕。东东说：“天黑了，我有点怕。”东东骄傲地说：“我是一个勇敢的小男孩！”") == []


def test_comforting_yourself_after_a_worry():
    assert failed("莉莉吓得捂住了耳朵。莉莉小声说：“我怕打雷！”莉莉说：“别怕，我陪着你。”") == ["self_address"]
    assert failed("莉莉吓得捂住了耳朵。莉莉小声说：“我怕打雷！”莉莉对自己说：“别怕，我能行！”") == []
    assert failed("莉莉吓得捂住了耳朵。莉莉小声说：“我怕打雷！”小明说：“别怕，我陪着你。”") == ["name_consistent"]


def test_a_plot_keeps_to_one_task_or_fear_and_has_its_core():
    bike = "莉莉想学骑自行车。可是她刚骑上去，车子一歪，就摔倒了。莉莉对自己说：“再试一次！”"
    assert failed(bike + "这一次，她坐得稳稳的，眼睛看着前面，用力一蹬，车子一下子骑出去好远。") == []
    assert failed(bike + "这一次，她找来一根长长的树枝，轻轻一碰，果子就掉进了她的手里。") == ["plot_consistent"]
    thunder = "突然，天上“轰隆隆”地打起了雷。天天吓得捂住了耳朵。天天小声说：“我怕打雷！”"
    assert failed(thunder + "天天深深地吸了一口气，数了一、二、三，雷声慢慢地变小了。") == []
    assert failed(thunder + "天天抬起头，看见天上亮起了好多星星，月亮也出来了。") == ["plot_consistent"]
    # The overcoming of a fear that was never told (default-final seed 2026 in the labelled set).
    assert failed("在森林里浇花。豆豆闭上眼睛，“呼”地一下滑了下来。原来滑滑梯一点也不可怕，还特别好玩！") \
        == ["plot_consistent"]


def test_a_moral_needs_its_plot():
    kite = "在森林里采野花。天天想放风筝。可是风筝刚飞起来，就一头栽到了地上。天天说：“没关系，我们再来一次！”"
    moral = "天天明白了，只要不放弃，就一定能做到。"
    assert failed(kite + moral) == ["plot_consistent"]
    assert failed(kite + "这一次，他迎着风跑了起来，风筝越飞越高，像一只大鸟在天上飞。" + moral) == []
    assert failed("朵朵和乐乐是最好的朋友。朵朵明白了，勇敢就是害怕的时候也敢试一试。") == ["plot_consistent"]


def test_one_place_only():
    prompt = "在森林里"
    assert failed(prompt + "，住着一只小兔子。有一天，它跑到了海边。", prompt) == ["place_consistent"]
    assert failed(prompt + "，住着一只小兔子。它在森林里跑来跑去。", prompt) == []
    assert failed("有一天，小明和他的狗去公园玩。") == []  # a move the generator writes: home to the place


def test_name_must_be_introduced():
    assert "name_consistent" in failed("从前，有一个叫莉莉的小女孩。莉莉和小明去公园玩。")
    assert failed("从前，有一个叫莉莉的小女孩。她遇到了一个叫小明的小男孩。小明笑了。") == []
    assert failed("莉莉问：“你叫什么名字？”“我叫乐乐。”乐乐说。") == []
    prompt = "小明哭了。莉莉走了过来"
    assert failed(prompt + "，说：“别哭。”小明不哭了。", prompt) == []
    assert failed(prompt + "。莉莉说：“别哭。”", "") == ["name_consistent"]


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


def test_two_sentences_and_a_moral_are_not_a_story():
    assert check_story("朵朵和乐乐是最好的朋友。原来，帮助别人是一件这么快乐的事。")["failed_rules"] == ["long_enough"]
    assert check_story("朵朵和乐乐是好朋友。他们去公园玩。乐乐摔了一跤。朵朵扶起了他。乐乐笑了。")["consistent"]


def test_verdict_lists_every_failed_rule_in_order():
    result = check_story("从前，有一个叫莉莉的小女孩。他和莉莉和莉莉去了公园，又去了海边")
    assert result["failed_rules"] == ["gender_consistent", "self_pair", "place_consistent", "long_enough", "ended"]
    assert not result["consistent"]
    assert set(RULES) <= set(result)


def test_score_fractions():
    more = "小狗跑得很快。小明追着小狗跑。他们玩得很开心。"
    samples = [
        {"prompt": "有一天，小明和他的狗", "text": "有一天，小明和他的狗去公园。" + more + "小明笑了。"},  # all good
        {"prompt": "有一天，小明和他的狗", "text": "有一天，小明和他的狗去公园。" + more + "又去了海边。"},  # two places
        {"prompt": "有一天，小明和他的狗", "text": "有一天，小明和他的狗去公园。" + more + "莉莉来了。"},    # new name
        {"prompt": "有一天，小明和他的狗", "text": "有一天，小明和他的狗去公园。小明笑"},                # short, cut off
    ]
    result = score(samples)
    assert result == {"num_samples": 4, "consistent_fraction": 0.25, "name_consistent_fraction": 0.75,
                      "gender_consistent_fraction": 1.0, "self_pair_fraction": 1.0, "self_address_fraction": 1.0,
                      "self_intro_fraction": 1.0, "object_consistent_fraction": 1.0,
                      "animal_consistent_fraction": 1.0, "plot_consistent_fraction": 1.0,
                      "group_consistent_fraction": 1.0, "game_consistent_fraction": 1.0,
                      "place_consistent_fraction": 0.75,
                      "long_enough_fraction": 0.75, "ended_fraction": 0.75}


def test_score_of_nothing():
    assert score([]) == {"num_samples": 0, "consistent_fraction": 0.0, **{f"{r}_fraction": 0.0 for r in RULES}}


# -- agreement with a careful reader on model samples ---------------------------------------
# tests/data/labelled_samples.jsonl: stories sampled from checkpoints of different quality
# (docs/evaluation.md), each read and labelled by hand with a one-line reason.

def labelled() -> list[dict]:
    return [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_labelled_set_is_well_formed():
    samples = labelled()
    assert len(samples) >= 60
    for s in samples:
        assert set(s) == {"prompt", "text", "label", "reason", "source", "seed"}, s
        assert s["text"].startswith(s["prompt"]) and isinstance(s["label"], bool) and s["reason"].strip()
    assert {s["source"] for s in samples} >= {"default-step100", "default-final", "larger-final", "tuned-final"}
    assert len({(s["source"], s["seed"]) for s in samples}) == len(samples)


def test_agreement_with_hand_labels():
    samples = labelled()
    verdicts = [check_story(s["text"], s["prompt"])["consistent"] for s in samples]
    false_positives = [s["reason"] for s, v in zip(samples, verdicts, strict=True) if v and not s["label"]]
    false_negatives = [s["reason"] for s, v in zip(samples, verdicts, strict=True) if not v and s["label"]]
    agree = len(samples) - len(false_positives) - len(false_negatives)
    assert (len(samples), agree) == (AGREEMENT["samples"], AGREEMENT["agree"])
    assert len(false_positives) == AGREEMENT["false_positives"], false_positives
    assert len(false_negatives) == AGREEMENT["false_negatives"], false_negatives


# -- generated stories ----------------------------------------------------------------------

def test_every_generated_story_is_consistent(stories):
    for story in stories:
        result = check_story(story["text"])
        assert result["consistent"], (result["failed_rules"], story["text"])
        # The checker finds exactly the characters and the place the generator used.
        assert result["names"] == story["names"], story["text"]
        assert result["places"] == [story["place"]], story["text"]


def test_score_of_generated_stories_with_prompts(stories):
    rng = random.Random(0)
    samples = [{"prompt": s["text"][:rng.randint(4, 15)], "text": s["text"]} for s in stories[:1000]]
    result = score(samples)
    assert result["num_samples"] == 1000
    assert all(result[f"{rule}_fraction"] == 1.0 for rule in RULES) and result["consistent_fraction"] == 1.0


def swap_a_later_name(text: str, name: str, new_name: str) -> str | None:
    """Replace the last mention of name that is neither in the first sentence nor after 叫."""
    start = len(first_sentence(text))
    at = text.rfind(name)
    while at >= start:
        if not text[:at].endswith("叫"):
            return text[:at] + new_name + text[at + len(name):]
        at = text.rfind(name, 0, at)
    return None


def test_swapped_name_fails_the_name_rule(stories):
    rng = random.Random(1)
    swapped = 0
    for story in stories[:500]:
        new_name = rng.choice([n for n in NAMES if n not in story["names"]])
        text = swap_a_later_name(story["text"], story["names"][0], new_name)
        if text is None:
            continue
        swapped += 1
        result = check_story(text)
        assert "name_consistent" in result["failed_rules"] and new_name in result["names"], text
        assert result["place_consistent"] and result["ended"] and not result["consistent"]
    assert swapped >= 490  # the hero is named again after the first sentence in nearly every story


def test_friend_renamed_as_the_hero_fails_a_role_rule(stories):
    """莉莉和莉莉, 谢谢你，天天 said by 天天: the second character given the hero's name."""
    renamed = 0
    for story in stories[:1000]:
        if len(story["names"]) < 2:
            continue
        hero, friend = story["names"]
        text = story["text"].replace(friend, hero)
        renamed += 1
        result = check_story(text)
        roles = {"self_pair", "self_address", "self_intro"} & set(result["failed_rules"])
        assert roles, text
    assert renamed > 300


def test_a_group_pronoun_for_a_lone_hero_fails_only_the_group_rule(stories):
    """他们 when the hero is alone (the tuned default's commonest slip): nobody for 他们 to be."""
    alone = [s for s in stories[:1500] if len(s["names"]) == 1 and not s["animal"] and "们" not in s["text"]]
    assert len(alone) > 100
    for story in alone:
        first = first_sentence(story["text"])
        text = first + "他们玩得很开心。" + story["text"][len(first):]
        assert check_story(text)["failed_rules"] == ["group_consistent"], text
    # With company, 他们 is fine: a friend, or the pet.
    assert not failed("朵朵和乐乐去山谷玩。风把朵朵的帽子吹走了！他们追着帽子跑啊跑。")
    assert not failed("有一天，小明和他的狗去小镇上玩。风把小明的帽子吹走了！他们追着帽子跑啊跑。")
    assert failed("在森林里采野花。风把琪琪的帽子吹走了！他们追着帽子跑啊跑。") == ["group_consistent"]


def test_playing_another_game_than_the_one_proposed_fails_only_the_game_rule(stories):
    played = re.compile(r"(和[^，。]{1,4}一起)(玩捉迷藏|玩老鹰捉小鸡|玩过家家|玩木头人|比赛跑步)")
    changed = 0
    for story in stories:
        m = played.search(story["text"])
        if not m or "一起" + m.group(2) not in story["text"][:m.start()]:
            continue  # no game, or one played without being proposed
        other = "玩木头人" if m.group(2) != "玩木头人" else "玩过家家"
        text = story["text"][:m.start(2)] + other + story["text"][m.end(2):]
        assert check_story(text)["failed_rules"] == ["game_consistent"], text
        changed += 1
    assert changed > 100


def test_a_new_animal_brought_in_is_not_the_pet_changing():
    # 一只小兔子 enters the story: a pet dog and the rabbit it helps (held-out sample tuned-final 3019).
    helped = "有一天，小明和他的狗去池塘边玩。突然，小明看见一只小兔子的腿被一根绳子缠住了。小明解开了绳子。"
    assert "animal_consistent" not in failed(helped)
    # The duckling just turns up where the dog was: the pet changed (tuned-final 3001).
    swapped = "有一天，小明和他的狗去幼儿园玩。小明摔倒了。小鸭子在旁边转来转去，好像在给小明加油。"
    assert "animal_consistent" in failed(swapped)


def test_second_place_fails_only_the_place_rule(stories):
    rng = random.Random(2)
    for story in stories[:500]:
        other = rng.choice([p for p in PLACES if p != story["place"]])
        first = first_sentence(story["text"])
        text = first + f"后来又去了{other}。" + story["text"][len(first):]
        result = check_story(text)
        assert result["failed_rules"] == ["place_consistent"], text
        assert set(result["places"]) == {story["place"], other}


def cut_sentences(text: str) -> int:
    return len(re.findall(r"[。！？]”?", text))


def test_cut_story_fails_the_ending_rule(stories):
    rng = random.Random(3)
    for story in stories[:500]:
        text = story["text"]
        # Cut after the first sentence and inside a sentence, not right after one.
        cuts = [i for i in range(len(first_sentence(text)) + 1, len(text)) if text[i - 1] not in "。！？”"]
        cut = text[:rng.choice(cuts)]
        rules = check_story(cut)["failed_rules"]
        # A cut may also come before a plot's core (萌萌想堆一个大大的沙堡。可是), never anything else.
        assert [r for r in rules if r != "plot_consistent"] == ["long_enough", "ended"][cut_sentences(cut) >= 5:], cut


# -- the command ------------------------------------------------------------------------------

def run_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "storylm.stories.consistency", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO / "workflow")})


def test_command_adds_the_verdict_to_each_line(tmp_path):
    lines = [{"prompt": "从前", "text": "从前，有一个叫莉莉的小女孩。莉莉和莉莉成了最好的朋友。", "seed": 3},
             {"prompt": "", "text": "小明去公园玩。他跑啊跑。他笑了。他累了。他回家了。"}]
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n\n", encoding="utf-8")
    done = run_command(str(path))
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert out == [{**lines[0], "consistent": False, "failed_rules": ["self_pair", "long_enough"]},
                   {**lines[1], "consistent": True, "failed_rules": []}]
    assert run_command(str(path), "--out", str(tmp_path / "checked.jsonl")).stdout == ""
    assert (tmp_path / "checked.jsonl").read_text(encoding="utf-8") == done.stdout


def test_command_line_without_text_is_one_error_naming_file_and_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"prompt": "a", "text": "b。"}\n{"prompt": "a"}\n', encoding="utf-8")
    done = run_command(str(path), "--out", str(tmp_path / "checked.jsonl"))
    assert done.returncode == 1 and done.stderr == f'error: {path}:2: needs a "text" string\n'
    assert not (tmp_path / "checked.jsonl").exists()
    path.write_text("not json\n", encoding="utf-8")
    done = run_command(str(path))
    assert done.returncode == 1 and done.stderr.startswith(f"error: {path}:1: not JSON") and "Traceback" not in done.stderr
