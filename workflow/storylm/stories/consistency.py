"""Checks a model-sampled story against what the builtin story world (storylm.stories.storygen) knows.

A sample's text is the prompt followed by the model's continuation. Each rule has a name;
a story is consistent when it fails none of them, and its verdict lists the ones it fails.

- name_consistent: a character introduced by name keeps that name. The cast is every known
  name (storygen.NAMES) in the prompt, in the first sentence, right after 叫 (一个叫乐乐的
  小男孩, 我叫乐乐, 名叫乐乐), and the first name of all (the hero of 在森林里采野花。
  乐乐……); any other known name in the text fails the rule.
- gender_consistent: a child keeps the gender of its name (GIRL_NAMES, BOY_NAMES): a girl's
  name is never given to a 小男孩, and a 他 or 她 outside dialogue refers to one of the last
  two people mentioned, so it must agree with one of them (莉莉……他 fails when 莉莉 is the
  only person around). A name given to an animal (一只叫莉莉的小熊) has no gender to keep.
- self_pair: no character is paired with or does something to themself: the same name twice
  in one clause (莉莉和莉莉成了最好的朋友, 小明帮小明).
- self_address: nobody thanks or speaks to themself: a line of dialogue that addresses a
  name (谢谢你，天天！ / 天天，我来帮你！) is not said by that name, and a line that comforts
  (别怕，我陪着你。) is not said by whoever just spoke a worry (我怕打雷！), unless the story
  says they talk to themself (对自己说).
- self_intro: nobody takes another character's name: 我叫X is said by X, and a character
  who is already in the story is not introduced again as someone new (一个叫莉莉的小女孩
  走了过来, when 莉莉 is the heroine).
- object_consistent: in a story where something is lost or found, it stays the same object
  (a lost 布娃娃 is not found as a 围巾): the story mentions at most one of storygen.OBJECTS,
  and nothing is found (找到, 就在那里) before something was lost (不见了, 没找到).
- animal_consistent: the pet stays the pet: an animal beyond the first one (besides the named
  characters) must be brought in as a new one (看见一只小兔子), not turn up where the pet was
  (小明和他的狗 …… 小鸭子在旁边转来转去). Birds are not counted, since the scenery has them
  (小鸟在树枝上唱歌).
- group_consistent: 他们/她们 in the narration needs someone besides the hero in the story
  already (a friend, a person, the pet, a 小男孩): 风把琪琪的帽子吹走了！他们追着帽子跑 fails
  when 琪琪 is alone (the generator writes 她 there).
- game_consistent: the game proposed (我们一起玩过家家吧！) is the game played (莉莉和乐乐
  一起玩过家家): storygen fills both from one slot.
- plot_consistent: a plot the generator writes keeps to itself: what a child tries again and
  again (storygen.TASKS), a fear and how it is overcome (FEARS), an animal's or a friend's
  trouble and the help (ANIMAL_PROBLEMS, FRIEND_PROBLEMS) each come from one entry (learning
  to ride a bike does not end with a fruit picked; a fear of thunder is not overcome by
  looking at the stars); a plot has its core (a failure before the success, the fear before
  it is overcome, the trouble before the help); and a moral needs its plot: 只要不放弃，就一定能做到 only after the
  success, 勇敢就是害怕的时候也敢试一试 only after a fear and its overcoming.
- place_consistent: at most one known place (storygen.PLACES) is mentioned; the generator
  only ever writes a move from home to that one place (去公园玩), never between two places.
- long_enough: the story has at least 5 sentences. The generator never writes fewer than 6,
  and a moral straight after the opening (朵朵和乐乐是最好的朋友。原来，多试几次就能成功。)
  is not a story.
- ended: the text ends with 。！？, or with ” right after one of them: the model finished
  the story instead of being cut off at max_new_tokens.

Every story storygen writes is consistent. Words are found left to right, longest first and
without overlaps, so 小明明天 holds 小明 (not 明明) and 本杰明 is one name.

    PYTHONPATH=workflow python -m storylm.stories.consistency SAMPLES.jsonl [--out CHECKED.jsonl]

reads JSON lines with "prompt" and "text" and writes each line back with "consistent" and
"failed_rules" added.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from storylm.io.entry import StageError, exit_with, write_text
from storylm.stories.storygen import (
    ANIMAL_KINDS,
    ANIMAL_PROBLEMS,
    ANIMALS,
    BOY_NAMES,
    CHILD_KINDS,
    FEARS,
    FRIEND_PROBLEMS,
    GIRL_NAMES,
    NAMES,
    OBJECTS,
    PLACES,
    TASKS,
    little,
)

RULES = ("name_consistent", "gender_consistent", "self_pair", "self_address", "self_intro",
         "object_consistent", "animal_consistent", "plot_consistent", "group_consistent", "game_consistent",
         "place_consistent", "long_enough", "ended")


def _longest_first(words) -> re.Pattern:
    # Alternatives are tried in order at each position, so longer words must come first.
    return re.compile("|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True)))


# -----------------------------------------------------------------------------
# What the world knows about who is who.

GENDER = {**{n: "f" for n in GIRL_NAMES}, **{n: "m" for n in BOY_NAMES}}
KIND_GENDER = {"小女孩": "f", "小男孩": "m"}
# People without a name the stories (or a model) may mention; a 他/她 can refer to them.
PEOPLE = {"妈妈": "f", "奶奶": "f", "姐姐": "f", "妹妹": "f", "阿姨": "f", "老奶奶": "f", "女孩": "f",
          "爸爸": "m", "爷爷": "m", "哥哥": "m", "弟弟": "m", "叔叔": "m", "老爷爷": "m", "男孩": "m",
          **KIND_GENDER}
# Animals: a 他/她 never needs to agree with one, but they can speak (小猫……好像在说).
ANIMAL_WORDS = tuple(ANIMAL_KINDS) + tuple(little(a) for a in ANIMALS) + ANIMALS + ("鸭妈妈", "大白鹅")
# The kinds an introduction gives a name: 一个叫莉莉的小女孩, 一只叫莉莉的小熊.
KINDS_PATTERN = "|".join(sorted(set(CHILD_KINDS) | set(ANIMAL_KINDS), key=len, reverse=True))

NAME_PATTERN = _longest_first(NAMES)
PLACE_PATTERN = _longest_first(PLACES)
MENTION_PATTERN = _longest_first(NAMES + tuple(PEOPLE) + ANIMAL_WORDS)
# Objects by their full or short name, mapped to the full name. 小木船旁边 is a place to look
# (SPOTS), not the object, so it is masked before objects are counted.
OBJECT_NAMES = {**{short: full for full, _, short in OBJECTS}, **{full: full for full, _, _ in OBJECTS}}
OBJECT_PATTERN = _longest_first(OBJECT_NAMES)
NOT_OBJECTS = ("小木船旁边",)
LOST = re.compile(r"不见了|丢了|弄丢|找不到|没找到|吹走了")
FOUND = re.compile(r"找到|就在那里|找了回来|就在[^，。！？]{0,8}[里下面后旁边]+[！。]")
# Lines the generator gives to a friend who comforts or helps; nobody says them to themself.
COMFORT = re.compile(r"^(别怕|别着急|别放弃|没关系)|我陪着你|我帮你|我来帮你")
WORRY = re.compile(r"(?<![别不])怕|不敢|会不会|掉下去|在哪里|去哪儿")
# The one animal a story may have (its pet or the animal helped), by every way it is named.
ANIMAL_BASE = {**{a: a for a in ANIMALS}, **{little(a): a for a in ANIMALS},
               **{k: k for k in ANIMAL_KINDS if k not in map(little, ANIMALS)}, "鸭妈妈": "鸭子"}
COUNTED_ANIMALS = _longest_first(w for w, base in ANIMAL_BASE.items() if base != "小鸟")
INTRODUCED_ANIMAL = re.compile(r"一只[^，。！？“”]{0,4}$")
# 他们/她们: a group, so someone besides the hero must be in the story already.
GROUP_PRONOUN = re.compile(r"[他她]们")
COMPANY_PATTERN = _longest_first(NAMES + tuple(PEOPLE) + tuple(w for w in ANIMAL_WORDS if w != "小鸟")  # birds: scenery
                                 + tuple(CHILD_KINDS) + ("狗", "猫"))
# The game a child proposes (我们一起玩过家家吧！) and the one the two then play (莉莉和乐乐一起玩木头人).
PROPOSED_GAME = re.compile(r"(?:我们一起|和我一起)(?P<game>[^，。！？“”]{2,8}?)(?:吧|吗)")
PLAYED_GAME = re.compile(rf"(?:{NAME_PATTERN.pattern})和(?:{NAME_PATTERN.pattern})一起(?P<game>[^，。！？“”]{{2,8}}?)[，。]")
SENTENCE_END = re.compile(r"[。！？]”?")
MIN_SENTENCES = 5

FIRST_SENTENCE = re.compile(r"[^。！？]*[。！？]?")
ENDED = re.compile(r"[。！？]”?$")
QUOTE = re.compile(r"“([^“”]*)”?")
CLAUSE_BREAK = re.compile(r"[，。！？：；、“”,.!?:;]")
SPEECH = re.compile(r"说|问|喊|叫|答|道")
# A name is addressed when a line starts with it (天天，……) or follows a greeting or thanks.
ADDRESS_BEFORE = ("谢谢你，", "谢谢你,", "谢谢", "你好，", "你好呀，", "再见，")
# Kinds and names given in an introduction; the kind fixes what the name is.
INTRODUCED_AS = (
    re.compile(rf"叫(?P<name>{NAME_PATTERN.pattern})的(?P<kind>{KINDS_PATTERN})"),
    re.compile(rf"(?P<name>{NAME_PATTERN.pattern})是一[个只][^，。！？]{{0,6}}?(?P<kind>{KINDS_PATTERN})"),
    re.compile(rf"(?P<kind>{KINDS_PATTERN})，名叫(?P<name>{NAME_PATTERN.pattern})"),
)
# 一个叫莉莉的 / 名叫莉莉: a new character enters the story.
NEW_CHARACTER = re.compile(rf"(?:一[个只]叫|名叫)(?P<name>{NAME_PATTERN.pattern})")


def signature(template: str) -> str:
    """The longest literal run of a storygen template, up to 16 characters: what a model that
    writes this sentence (with any name or pronoun in its slots) reproduces. Shorter cuts
    are not unique (找来一根长长的树枝 both reaches the fruit and helps the squirrel)."""
    return max(re.split(r"\{[a-z_0-9]+\}", template), key=len).strip("，。！？")[:16]


# Plots: each family's entries by their sentences' signatures. A story draws one entry of a
# family; the beats below are what a moral needs before it.
PLOTS = {
    "task": [[signature(t) for t in task[1:]] for task in TASKS],
    "fear": [[signature(t) for t in fear] for fear in FEARS["any"] + sum((FEARS[c] for c in FEARS if c != "any"), ())],
    "animal_problem": [[signature(t) for t in problem[1:]] for problem in ANIMAL_PROBLEMS],
    "friend_problem": [[signature(t) for t in problem] for problem in FRIEND_PROBLEMS],
}
# The beat without which the others make no sense: trying again needs a failure, overcoming a
# fear needs the fear, help needs the trouble.
CORE_BEAT = {"task": 1, "fear": 1, "animal_problem": 0, "friend_problem": 0}
# moral -> (family, index of the beat within an entry that must come first)
MORALS = {"只要不放弃，就一定能做到": ("task", 2), "多试几次就能成功": ("task", 2),
          "勇敢就是害怕的时候也敢试一试": ("fear", 3), "变得更勇敢了": ("fear", 3)}


def unique(items) -> list:
    """Items in order of first appearance, each once."""
    return list(dict.fromkeys(items))


def find_names(text: str) -> list[str]:
    return unique(m.group() for m in NAME_PATTERN.finditer(text))


def find_places(text: str) -> list[str]:
    return unique(m.group() for m in PLACE_PATTERN.finditer(text))


def find_objects(text: str) -> list[str]:
    for spot in NOT_OBJECTS:
        text = text.replace(spot, "#" * len(spot))
    return unique(OBJECT_NAMES[m.group()] for m in OBJECT_PATTERN.finditer(text))


def introduced_names(text: str) -> list[str]:
    """Names that follow 叫 or 叫做: the story says who the character is."""
    return unique(m.group() for m in NAME_PATTERN.finditer(text)
                  if text[:m.start()].endswith(("叫", "叫做")))


def first_sentence(text: str) -> str:
    return FIRST_SENTENCE.match(text).group()


# -----------------------------------------------------------------------------
# Reading a story: its lines of dialogue and who says them.


@dataclass
class Quote:
    start: int  # index of the first character inside the quotation marks
    text: str
    speaker: str | None  # a name, a person or an animal word; None when the story does not say


def first_mention(segment: str) -> str | None:
    m = MENTION_PATTERN.search(segment)
    return m.group() if m else None


def speaker_of(text: str, open_at: int, close_at: int) -> str | None:
    """莉莉笑着说：“……” (the first one mentioned since the sentence began) or “……”莉莉说。"""
    before = text[:open_at]
    if before.endswith(("：", ":")):
        # Back to the end of the last sentence or line of dialogue: 小明拍拍莉莉说 is 小明.
        start = max(before.rfind(c) for c in "。！？”") + 1
        return first_mention(before[start:])
    after = re.match(r"[^。！？，“]*", text[close_at + 1:]).group()
    if SPEECH.search(after):
        return first_mention(after)
    return None


def quotes(text: str) -> list[Quote]:
    return [Quote(m.start(1), m.group(1), speaker_of(text, m.start(), m.end() - 1)) for m in QUOTE.finditer(text)]


def outside_quotes(text: str) -> str:
    """The narration: text with every line of dialogue blanked out (same length, same indices)."""
    return QUOTE.sub(lambda m: "“" + "#" * (len(m.group()) - 1), text)


def addressed(line: str) -> list[str]:
    names = []
    for m in NAME_PATTERN.finditer(line):
        at_start = m.start() == 0 and line[m.end():m.end() + 1] in ("，", "！", "？", ",", "!")
        if at_start or line[:m.start()].endswith(ADDRESS_BEFORE):
            names.append(m.group())
    return names


# -----------------------------------------------------------------------------
# The rules. Each takes the text (prompt included) and returns True when the story keeps it.


def name_consistent(text: str, prompt: str) -> bool:
    names = find_names(text)
    cast = unique(find_names(prompt) + find_names(first_sentence(text)) + introduced_names(text) + names[:1])
    return all(name in cast for name in names)


def kinds(text: str) -> dict[str, str]:
    """Each name's kind where the story says it (叫莉莉的小女孩, 我叫莉莉 said by a 小女孩,
    我是一个勇敢的小男孩 said by 小明).
    A name given two kinds keeps the first; self_intro catches the second."""
    found = {}
    for pattern in INTRODUCED_AS:
        for m in pattern.finditer(text):
            found.setdefault(m.group("name"), (m.start(), m.group("kind")))
    for q in quotes(text):
        for m in re.finditer(rf"我叫(?P<name>{NAME_PATTERN.pattern})", q.text):
            if q.speaker in CHILD_KINDS or q.speaker in ANIMAL_KINDS:
                found.setdefault(m.group("name"), (q.start, q.speaker))
        # 我是一个勇敢的小男孩！ said by a name.
        for m in re.finditer(rf"我是一[个只][^，。！？]{{0,6}}?(?P<kind>{KINDS_PATTERN})", q.text):
            if q.speaker in NAMES:
                found.setdefault(q.speaker, (q.start, m.group("kind")))
    return {name: kind for name, (_, kind) in sorted(found.items(), key=lambda item: item[1][0])}


def gender_of(word: str, kind_of: dict[str, str]) -> str | None:
    """"f", "m", or None for an animal (named or not) that a 他/她 need not agree with."""
    if word in kind_of:
        return KIND_GENDER.get(kind_of[word])
    return GENDER.get(word) or PEOPLE.get(word)


def gender_consistent(text: str, prompt: str = "") -> bool:
    kind_of = kinds(text)
    if any(kind in KIND_GENDER and GENDER[name] != KIND_GENDER[kind] for name, kind in kind_of.items()):
        return False  # a girl's name given to a 小男孩, or a boy's to a 小女孩
    narration = outside_quotes(text)
    people = []  # (word, gender) of the people mentioned so far, most recent last
    # 他们/她们 are groups; a 他 at the very end may be a cut-off 他们, so it is not judged.
    for m in re.finditer(MENTION_PATTERN.pattern + r"|[他她](?=[^们])", text):
        word = m.group()
        if word in ("他", "她"):
            if narration[m.start()] == "#" or text[:m.start()].endswith("其"):
                continue  # dialogue speaks of others; 其他 is "other"
            recent = [dict(people)[w] for w in unique(w for w, _ in reversed(people))[:2]]
            if recent and ("f" if word == "她" else "m") not in recent and "any" not in recent:
                return False
        elif (gender := gender_of(word, kind_of)) is not None:
            people.append((word, gender))
        elif word in NAMES:
            people.append((word, "any"))  # a named animal: she or he, a reader accepts either
    return True


def self_pair(text: str, prompt: str = "") -> bool:
    for clause in CLAUSE_BREAK.split(text):
        names = [m.group() for m in NAME_PATTERN.finditer(clause)]
        if len(names) != len(set(names)):
            return False
    return True


def self_address(text: str, prompt: str = "") -> bool:
    lines = quotes(text)
    if any(q.speaker in addressed(q.text) for q in lines if q.speaker):
        return False
    for before, q in itertools.pairwise(lines):
        between = text[before.start + len(before.text):q.start]
        if (q.speaker and q.speaker == before.speaker and WORRY.search(before.text) and COMFORT.search(q.text)
                and "自己" not in between):
            return False  # 莉莉说：“我怕打雷！”莉莉说：“别怕，我陪着你。”
    return True


def self_intro(text: str, prompt: str = "") -> bool:
    for q in quotes(text):
        for m in re.finditer(rf"我叫(?P<name>{NAME_PATTERN.pattern})", q.text):
            name = m.group("name")
            if q.speaker in NAMES and q.speaker != name:
                return False  # 我叫莉莉 said by 小明
            if q.speaker is not None and q.speaker not in NAMES and name in text[:q.start - 1]:
                return False  # a new girl (小女孩) who takes the heroine's name
    for m in NEW_CHARACTER.finditer(text):
        if m.group("name") in text[:m.start()]:
            return False  # 一个叫莉莉的小女孩走了过来, when 莉莉 is already there
    return True


def object_consistent(text: str, prompt: str = "") -> bool:
    lost, found = LOST.search(text), FOUND.search(text)
    if found and find_objects(text) and not (lost and lost.start() < found.start()):
        return False  # 小汽车就在草丛里！ when nothing was lost
    return not (lost or found) or len(find_objects(text)) <= 1


def plot_entries(text: str, family: str) -> dict[int, list[int]]:
    """The entries of a plot family whose sentences the story has: {entry: [beats found]}."""
    found = {}
    for entry, beats in enumerate(PLOTS[family]):
        hits = [beat for beat, sig in enumerate(beats) if sig and sig in text]
        if hits:
            found[entry] = hits
    return found


def plot_consistent(text: str, prompt: str = "") -> bool:
    entries = {family: plot_entries(text, family) for family in PLOTS}
    if any(len(found) > 1 for found in entries.values()):
        return False  # two tasks, two fears or two troubles mixed into one plot
    if any(CORE_BEAT[family] not in beats for family, found in entries.items() for beats in found.values()):
        return False  # 滑了下来 with no fear of the slide, help with no trouble
    for moral, (family, beat) in MORALS.items():
        if moral in text and not any(beat in beats for beats in entries[family].values()):
            return False  # the moral of a plot that never happened
    return True


def animal_consistent(text: str, prompt: str = "") -> bool:
    characters = {ANIMAL_BASE[kind] for kind in kinds(text).values() if kind in ANIMAL_BASE}
    first_mentions = {}  # each animal's first mention: where it enters the story
    for m in COUNTED_ANIMALS.finditer(text):
        first_mentions.setdefault(ANIMAL_BASE[m.group()], m.start())
    later = [start for animal, start in first_mentions.items() if animal not in characters][1:]
    # Beyond the first, an animal must be brought in as a new one (看见一只小兔子); one that just
    # turns up where the pet was (小鸭子在旁边转来转去, after 小明和他的狗) is the pet changing.
    return all(INTRODUCED_ANIMAL.search(text[:start]) for start in later)


def company(text: str) -> list[tuple[int, str]]:
    """Who enters the story where: names, people, animals, and unnamed children (一个小男孩); the
    kind in an introduction (一个叫兰兰的小女孩) is the named child, not someone else."""
    naming = {m.start("kind") for pattern in INTRODUCED_AS for m in pattern.finditer(text)}
    return [(m.start(), m.group()) for m in COMPANY_PATTERN.finditer(text) if m.start() not in naming]


def group_consistent(text: str, prompt: str = "") -> bool:
    mentions = company(text)
    for m in GROUP_PRONOUN.finditer(outside_quotes(text)):
        if len({who for start, who in mentions if start < m.start()}) < 2:
            return False  # 风把琪琪的帽子吹走了！他们追着帽子跑, with 琪琪 alone
    return True


def game_consistent(text: str, prompt: str = "") -> bool:
    proposed = PROPOSED_GAME.search(text)
    played = proposed and PLAYED_GAME.search(text, proposed.end())
    return not played or played.group("game") == proposed.group("game")


def place_consistent(text: str, prompt: str = "") -> bool:
    return len(find_places(text)) <= 1


def long_enough(text: str, prompt: str = "") -> bool:
    return len(SENTENCE_END.findall(text)) >= MIN_SENTENCES


def ended(text: str, prompt: str = "") -> bool:
    return ENDED.search(text) is not None


RULE_CHECKS = {
    "name_consistent": name_consistent,
    "gender_consistent": gender_consistent,
    "self_pair": self_pair,
    "self_address": self_address,
    "self_intro": self_intro,
    "object_consistent": object_consistent,
    "animal_consistent": animal_consistent,
    "plot_consistent": plot_consistent,
    "group_consistent": group_consistent,
    "game_consistent": game_consistent,
    "place_consistent": place_consistent,
    "long_enough": long_enough,
    "ended": ended,
}


def check_story(text: str, prompt: str = "") -> dict:
    """Every rule for one sample (text includes the prompt): each rule's verdict,
    "failed_rules" in RULES order, and "consistent" when none failed."""
    text, prompt = text.strip(), prompt.strip()
    verdicts = {rule: RULE_CHECKS[rule](text, prompt) for rule in RULES}
    return {
        "names": find_names(text),
        "places": find_places(text),
        **verdicts,
        "failed_rules": [rule for rule in RULES if not verdicts[rule]],
        "consistent": all(verdicts.values()),
    }


def score(samples: list[dict]) -> dict:
    """Fractions of samples ({"prompt", "text"}) that are consistent and that keep each rule
    ("<rule>_fraction"); 0.0 for no samples."""
    checks = [check_story(s["text"], s.get("prompt", "")) for s in samples]
    n = len(checks)

    def fraction(key: str) -> float:
        return sum(c[key] for c in checks) / n if n else 0.0

    return {"num_samples": n, "consistent_fraction": fraction("consistent"),
            **{f"{rule}_fraction": fraction(rule) for rule in RULES}}


# -----------------------------------------------------------------------------
# The command: JSON lines in, the same lines with the verdict added out.


def read_sample_lines(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise StageError(f"{path}: cannot read: {error}") from None
    samples = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
        except json.JSONDecodeError as error:
            raise StageError(f"{path}:{number}: not JSON: {error}") from None
        if not isinstance(sample, dict) or not isinstance(sample.get("text"), str):
            raise StageError(f'{path}:{number}: needs a "text" string')
        if not isinstance(sample.get("prompt", ""), str):
            raise StageError(f'{path}:{number}: "prompt" must be a string')
        samples.append(sample)
    return samples


def checked_lines(samples: list[dict]) -> str:
    lines = []
    for sample in samples:
        result = check_story(sample["text"], sample.get("prompt", ""))
        lines.append(json.dumps({**sample, "consistent": result["consistent"],
                                 "failed_rules": result["failed_rules"]}, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Add the story checker's verdict to JSON lines of samples.")
    parser.add_argument("samples", type=Path, help='JSON lines with "prompt" and "text"')
    parser.add_argument("--out", type=Path, help="where to write the checked lines (default: stdout)")
    args = parser.parse_args(argv)
    output = checked_lines(read_sample_lines(args.samples))
    if args.out:
        write_text(args.out, output)
    else:
        sys.stdout.write(output)


if __name__ == "__main__":
    exit_with(main)
