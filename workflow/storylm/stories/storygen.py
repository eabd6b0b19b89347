"""The builtin corpus: a seeded generator of simple Chinese children's stories.

Each story is put together from a small world (names, places, animals, objects) and one of
several story shapes: a lost object found, a new friend, helping someone, a fear overcome,
sharing, a weather surprise, trying again. Every slot has several wordings and some
sentences are optional, so a model has to learn the structure rather than memorise stories.

Story i of a corpus is drawn from its own random.Random seeded with the string
"{seed}:{i}". String seeds are hashed with SHA-512, so the stories depend neither on
PYTHONHASHSEED nor on how many stories are asked for (the first k are always the same).

The world keeps two rules that storylm.stories.consistency checks on model samples:
a named character is introduced in the first sentence or with 叫 (一个叫乐乐的小男孩,
我叫乐乐) and keeps that name, and a story mentions exactly one place.

    PYTHONPATH=workflow python -m storylm.stories.storygen --num-stories 10 --seed 1 --out x.jsonl
"""

import argparse
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# -----------------------------------------------------------------------------
# The world. Names are two or three characters long and none of them is a common word or
# part of a phrase the templates use (a single 本 would match 一本书, 小雪 would match
# 下起了小雪), so the consistency checker can find them by plain substring search.

GIRL_NAMES = (
    "莉莉", "小红", "朵朵", "兰兰", "贝贝", "妞妞", "琪琪", "可可", "欢欢", "佳佳",
    "悠悠", "萌萌", "小丽", "小芳", "小玲", "露西", "艾米", "安娜", "米娅", "莎拉",
    "艾玛", "苏菲", "安安",
)
BOY_NAMES = (
    "小明", "乐乐", "天天", "豆豆", "丁丁", "壮壮", "冬冬", "明明", "东东", "小杰",
    "小宇", "小军", "小刚", "小林", "小文", "小伟", "小虎", "汤姆", "杰克", "蒂姆",
    "麦克斯", "山姆", "鲍勃", "本杰明",
)
NAMES = GIRL_NAMES + BOY_NAMES

# kind -> (pronoun, measure word)
CHILD_KINDS = {"小女孩": ("她", "个"), "小男孩": ("他", "个")}
ANIMAL_KINDS = {kind: ("它", "只") for kind in ("小兔子", "小熊", "小松鼠", "小狐狸", "小刺猬", "小猴子")}
KINDS = tuple(CHILD_KINDS) + tuple(ANIMAL_KINDS)

# place -> (where, category). "where" is the place with its locative (森林里, 海边, 山坡上):
# 在{where} is "at the place", 去{where}玩 is "go to the place to play".
# The category picks activities, shelters and hiding spots that fit the place.
PLACE_INFO = {
    "森林": ("森林里", "wild"),
    "树林": ("树林里", "wild"),
    "山谷": ("山谷里", "wild"),
    "山坡": ("山坡上", "wild"),
    "海边": ("海边", "water"),
    "沙滩": ("沙滩上", "water"),
    "湖边": ("湖边", "water"),
    "小河边": ("小河边", "water"),
    "池塘边": ("池塘边", "water"),
    "公园": ("公园里", "town"),
    "游乐场": ("游乐场里", "town"),
    "学校": ("学校里", "town"),
    "幼儿园": ("幼儿园里", "town"),
    "操场": ("操场上", "town"),
    "小镇": ("小镇上", "town"),
    "村子": ("村子里", "farm"),
    "农场": ("农场里", "farm"),
    "果园": ("果园里", "farm"),
    "菜园": ("菜园里", "farm"),
    "田野": ("田野里", "farm"),
    "草地": ("草地上", "farm"),
    "花园": ("花园里", "farm"),
    "院子": ("院子里", "farm"),
}
PLACES = tuple(PLACE_INFO)
# Places where an animal or a family can be said to live (在森林里，住着……).
HOMES = ("森林", "树林", "山谷", "海边", "湖边", "小河边", "小镇", "村子", "农场", "花园")

# Things a child can do alone at a place; GAMES need two.
ACTIVITIES = {
    "wild": ("采蘑菇", "捡松果", "采野花", "看小鸟", "追蝴蝶", "捡树叶"),
    "water": ("捡贝壳", "玩水", "看小鱼", "扔小石子", "追浪花", "捡石头"),
    "town": ("荡秋千", "滑滑梯", "踢球", "跳绳", "拍皮球", "吹泡泡"),
    "farm": ("追蝴蝶", "捉蜻蜓", "看蚂蚁搬家", "采野花", "放风筝", "浇花"),
}
GAMES = ("玩捉迷藏", "玩老鹰捉小鸡", "玩过家家", "玩木头人", "比赛跑步")
# A sentence about what the place looks like, to give the stories some colour.
SCENERY = {
    "wild": ("{where}的大树又高又绿，小鸟在树枝上唱歌。", "{where}静悄悄的，只听见风吹树叶沙沙地响。"),
    "water": ("水面上闪着亮晶晶的光，小鱼在水里游来游去。", "风轻轻地吹着，水面上起了一圈一圈的波纹。"),
    "town": ("{where}有很多小朋友，到处都是笑声。", "{where}的花开得正好，红的、黄的、紫的，漂亮极了。"),
    "farm": ("{where}开满了小花，蝴蝶在花丛中飞来飞去。", "{where}的小草绿绿的，踩上去软软的。"),
    "any": ("太阳暖洋洋地照着大地。", "天空蓝蓝的，白云像一团团棉花糖。", "风轻轻地吹着，真舒服。"),
}
# Where a lost thing turns up or a sad friend sits.
SPOTS = {
    "wild": ("一棵大树下面", "草丛里", "一块大石头后面", "一堆树叶里", "一根木头旁边"),
    "water": ("一块大石头后面", "一丛芦苇里", "一只小木船旁边", "草丛里", "一棵柳树下面"),
    "town": ("长椅下面", "滑梯后面", "一棵大树下面", "花丛里", "草丛里"),
    "farm": ("一棵大树下面", "草丛里", "花丛里", "一堆干草里", "篱笆旁边"),
}
SHELTERS = {
    "wild": ("一棵大树下面", "一块大石头下面"),
    "water": ("一个小亭子里", "一棵大柳树下面"),
    "town": ("一个小亭子里", "屋檐下面"),
    "farm": ("一间小木屋里", "一棵大树下面"),
}

ANIMALS = ("狗", "猫", "兔子", "鸭子", "乌龟", "鹦鹉", "小鸟", "松鼠", "刺猬", "小羊")
# A pet goes everywhere with its child; dogs are the most common, as in TinyStories.
PETS = ("狗", "狗", "狗", "猫", "猫", "兔子", "鸭子", "鹦鹉", "乌龟")
# How a pet points the way to a lost thing.
PET_HINTS = {
    "狗": "用鼻子闻了闻，汪汪叫着跑到了",
    "猫": "喵喵地叫着，一下子跳到了",
    "兔子": "竖起长耳朵，蹦蹦跳跳地跑到了",
    "鸭子": "嘎嘎地叫着，摇摇摆摆地走到了",
    "鹦鹉": "拍着翅膀飞了一圈，落在了",
    "乌龟": "伸出小脑袋，慢慢地爬到了",
}

# (full name, measure word, short name)
OBJECTS = (
    ("红色小球", "个", "小球"),
    ("黄帽子", "顶", "帽子"),
    ("布娃娃", "个", "布娃娃"),
    ("玩具小汽车", "辆", "小汽车"),
    ("小铃铛", "个", "小铃铛"),
    ("绿围巾", "条", "围巾"),
    ("彩色蜡笔", "盒", "蜡笔"),
    ("蓝色小书包", "个", "小书包"),
    ("蝴蝶发卡", "个", "发卡"),
    ("小木船", "只", "小木船"),
    ("玻璃弹珠", "颗", "弹珠"),
    ("小手电筒", "个", "手电筒"),
)
# (what the hero brings, short name, verb, what sharing does to it)
SHAREABLES = (
    ("一袋饼干", "饼干", "吃", "更好吃了"),
    ("两个大苹果", "苹果", "吃", "更香了"),
    ("一块草莓蛋糕", "蛋糕", "吃", "更好吃了"),
    ("一盒糖果", "糖果", "吃", "更甜了"),
    ("一串葡萄", "葡萄", "吃", "更甜了"),
    ("一个新皮球", "皮球", "玩", "更好玩了"),
    ("一辆玩具小汽车", "小汽车", "玩", "更好玩了"),
    ("一个会转的风车", "风车", "玩", "更好玩了"),
)

# How the hero feels at the end; the worries along the way are part of each shape's text.
FEELINGS = ("开心", "高兴", "快乐", "幸福", "温暖", "满足", "骄傲")
TIMES = ("有一天", "一个晴朗的早上", "一个暖和的下午", "星期天", "一个周末的早上", "这天下午")
TRAITS = (
    "非常喜欢唱歌", "最喜欢画画", "总是笑眯眯的", "有一点害羞", "对什么都很好奇",
    "很喜欢交朋友", "跑得特别快", "很爱帮助别人", "每天都有很多问题",
)
ADJECTIVES = ("爱笑", "可爱", "善良", "活泼", "好奇", "聪明", "害羞", "调皮")

# An animal in trouble: (animal, trouble, what the hero does, how it says thanks)
ANIMAL_PROBLEMS = (
    ("小鸟", "从树上掉了下来，翅膀受了伤",
     "轻轻地把小鸟捧在手里，又小心地把它放回了树上的鸟窝里",
     "小鸟叽叽喳喳地叫着，好像在说谢谢"),
    ("猫", "爬到了高高的树上，不敢下来",
     "站在树下张开双手，小声说：“别怕，跳下来吧！”小猫一跳，正好落进了{his}怀里",
     "小猫用头蹭了蹭{his}手，喵喵地叫了两声"),
    ("鸭子", "找不到妈妈了，急得嘎嘎直叫",
     "带着小鸭子找啊找，终于在芦苇旁边找到了鸭妈妈",
     "小鸭子扑到妈妈身边，回头冲{him}嘎嘎叫了两声"),
    ("松鼠", "的松果掉进了一个深深的树洞里，怎么也够不着",
     "找来一根长长的树枝，帮小松鼠把松果勾了出来",
     "小松鼠抱着松果，高兴地在树枝上跳来跳去"),
    ("兔子", "的腿被一根绳子缠住了，怎么也挣不开",
     "蹲下来，一点一点地解开了绳子",
     "小兔子蹦了两下，竖起耳朵看着{him}，好像在说谢谢"),
    ("乌龟", "翻了个身，四脚朝天，怎么也翻不过来",
     "轻轻地帮小乌龟翻了过来",
     "小乌龟伸出小脑袋，慢慢地点了点头"),
    ("刺猬", "身上的刺扎满了落叶，走路都歪歪扭扭的",
     "一片一片地帮小刺猬把叶子摘了下来",
     "小刺猬抖了抖身子，开心地在地上打了个滚"),
)
# A friend in trouble: (trouble, what the hero does)
FRIEND_PROBLEMS = (
    ("不小心摔了一跤，膝盖都磕红了", "扶起{friend}，陪着{fhe}慢慢地走"),
    ("的风筝挂在了树枝上，怎么也拿不下来", "找来一根长长的竹竿，帮{friend}把风筝取了下来"),
    ("提着一大篮苹果，走得气喘吁吁", "和{friend}一起抬着篮子，一路说说话，一下子就到了"),
    ("的鞋带松了，自己怎么也系不好", "蹲下来，教{friend}一步一步地系好了鞋带"),
    ("的小球滚进了草丛里，找了半天也没找到", "和{friend}一起弯着腰找，终于把小球找了回来"),
)

# A fear and how it is overcome: (setup, fear, what the hero says, overcome, afterwards)
FEARS = {
    "any": (
        ("突然，天上“轰隆隆”地打起了雷。", "{hero}吓得捂住了耳朵。", "我怕打雷！",
         "{hero}深深地吸了一口气，数了一、二、三，雷声慢慢地变小了。",
         "{hero}发现，打雷只是天空在大声说话，没什么好怕的。"),
        ("玩着玩着，太阳下山了，四周变得黑乎乎的。", "{hero}心里有点害怕。", "天黑了，我有点怕。",
         "{hero}抬起头，看见天上亮起了好多星星，月亮也出来了。",
         "原来，夜晚也这么美。"),
    ),
    "wild": (
        ("走着走着，{they}看到了一个黑黑的山洞。", "{hero}站在洞口，不敢进去。", "里面会不会有怪兽呀？",
         "{hero}打开小手电筒，一步一步地走了进去。",
         "山洞里没有怪兽，只有几只睡觉的蝙蝠，墙上还有亮晶晶的石头。"),
        ("走着走着，{they}来到一座窄窄的小木桥前，桥下是哗哗的流水。", "{hero}停下来，不敢往前走。",
         "桥会不会断呀？我害怕。",
         "{hero}拉着栏杆，一步一步地走了过去。",
         "走到桥那边，{hero}回头一看，原来小木桥一点也不可怕。"),
    ),
    "water": (
        ("水面闪着亮光，{hero}很想下水玩，可是水看起来好深。", "{hero}站在岸上，一动也不敢动。",
         "水会不会把我冲走呀？",
         "{hero}先把小脚伸进水里，水凉凉的，一点也不深。",
         "没过多久，{he}就在浅浅的水里玩得哈哈大笑。"),
    ),
    "town": (
        ("{where}有一个高高的滑梯。", "{hero}站在滑梯上面，往下一看，腿都软了。", "太高了，我不敢滑。",
         "{hero}闭上眼睛，“呼”地一下滑了下来。",
         "原来滑滑梯一点也不可怕，还特别好玩！"),
        ("{where}有一个新秋千，荡起来高高的。", "{hero}抓着绳子，不敢让秋千荡起来。", "荡得太高，我会掉下去的！",
         "{hero}抓紧绳子，轻轻地荡了一下，又荡了一下。",
         "秋千越荡越高，风从耳边吹过，舒服极了。"),
    ),
    "farm": (
        ("一只大白鹅伸着长脖子，冲着{hero}嘎嘎大叫。", "{hero}吓得躲到了一边。", "大白鹅会不会咬我呀？",
         "{hero}鼓起勇气，站直了身子，慢慢地往前走。",
         "大白鹅看了看{him}，摇摇摆摆地走开了。"),
    ),
}

# Something to try again and again: (places it fits, want, failure, success)
TASKS = (
    (("farm", "water", "town"), "{hero}想放风筝。",
     "可是风筝刚飞起来，就一头栽到了地上。",
     "这一次，{he}迎着风跑了起来，风筝越飞越高，像一只大鸟在天上飞。"),
    (("water",), "{hero}想堆一个大大的沙堡。",
     "可是沙堡刚堆好，一朵浪花打过来，沙堡就塌了。",
     "这一次，{he}把沙堡堆在离水远一点的地方，沙堡终于稳稳地站住了。"),
    (("town", "farm"), "{hero}想学骑自行车。",
     "可是{he}刚骑上去，车子一歪，就摔倒了。",
     "这一次，{he}坐得稳稳的，眼睛看着前面，用力一蹬，车子一下子骑出去好远。"),
    (("town",), "{hero}想学跳绳。",
     "可是绳子总是绊到{his}脚。",
     "这一次，{he}跳了一下，两下，三下……一口气跳了十下！"),
    (("wild", "water", "town", "farm"), "{hero}想吹一个最大的泡泡。",
     "可是泡泡刚吹出来，“啪”的一声就破了。",
     "这一次，{he}慢慢地、轻轻地吹，吹出了一个像西瓜那么大的泡泡！"),
    (("wild", "farm"), "{hero}想摘树上的红果子。",
     "可是果子挂得太高了，{he}跳了好几次都够不着。",
     "这一次，{he}找来一根长长的树枝，轻轻一碰，果子就掉进了{his}手里。"),
    (("wild", "water", "town", "farm"), "{hero}想画一幅{place}的画。",
     "可是第一次，{he}画的大树歪歪扭扭的，像一条小蛇。",
     "这一次，{he}画得又慢又仔细，画出了一幅漂亮的画。"),
)

ENDINGS = (
    "那天晚上，{hero}睡得特别香。",
    "太阳下山了，{they}高高兴兴地回家了。",
    "这真是快乐的一天！",
    "回家的路上，{hero}一直笑眯眯的。",
    "{hero}觉得，今天是最棒的一天。",
    "那一刻，{hero}觉得{feeling}极了。",
    "晚上，{hero}把今天的事讲给妈妈听，妈妈也笑了。",
)

SHAPES = ("lost_object", "new_friend", "helping", "brave", "sharing", "weather", "try_again")


# -----------------------------------------------------------------------------
# Writing one story


@dataclass
class Character:
    name: str
    kind: str
    pronoun: str
    measure: str

    @property
    def is_child(self) -> bool:
        return self.kind in CHILD_KINDS


def make_character(rng: random.Random, child: bool, taken: tuple[str, ...] = ()) -> Character:
    if child:
        kind = rng.choice(tuple(CHILD_KINDS))
        names = GIRL_NAMES if kind == "小女孩" else BOY_NAMES
        pronoun, measure = CHILD_KINDS[kind]
    else:
        kind = rng.choice(tuple(k for k in ANIMAL_KINDS if k not in taken))
        names = NAMES
        pronoun, measure = ANIMAL_KINDS[kind]
    name = rng.choice(tuple(n for n in names if n not in taken))
    return Character(name, kind, pronoun, measure)


def little(animal: str) -> str:
    """狗 -> 小狗: how the story refers to an animal after introducing it."""
    return animal if animal.startswith("小") else "小" + animal


class Writer:
    """Builds a story sentence by sentence. Templates are filled from self.slots
    ({hero}, {he}, {where} ...) and each call picks one of several wordings."""

    def __init__(self, rng: random.Random, slots: dict):
        self.rng = rng
        self.slots = slots
        self.parts: list[str] = []

    def fill(self, template: str) -> str:
        return template.format(**self.slots)

    def add(self, *options: str) -> None:
        self.parts.append(self.fill(self.rng.choice(options)))

    def maybe(self, p: float, *options: str) -> None:
        if self.rng.random() < p:
            self.add(*options)

    def say(self, who: str, lines: tuple[str, ...], verbs: tuple[str, ...] = ("说",)) -> None:
        """A line of dialogue, either 莉莉说：“……” or “……”莉莉说。"""
        who, line, verb = self.fill(who), self.fill(self.rng.choice(lines)), self.fill(self.rng.choice(verbs))
        if self.rng.random() < 0.7:
            self.parts.append(f"{who}{verb}：“{line}”")
        else:
            self.parts.append(f"“{line}”{who}{verb}。")

    def text(self) -> str:
        return "".join(self.parts)


def open_story(w: Writer, companion: str) -> bool:
    """The first sentence(s): introduce the hero, and the friend or pet when the story starts
    with them ("friend", "pet" or ""). Returns True when the hero is already at the place."""
    hero_is_child = w.slots["kind"] in CHILD_KINDS
    at_place = w.rng.random() < 0.35
    if companion == "friend":
        if at_place:
            w.add("在{where}，{hero}和{friend}正在{act}。", "{time}，{hero}和{friend}在{where}{act}。")
        else:
            w.add("{hero}和{friend}是一对好朋友。", "{hero}和{friend}是最好的朋友。",
                  "从前，有两个好朋友，一个叫{hero}，一个叫{friend}。")
        return at_place
    if companion == "pet":
        if w.rng.random() < 0.5:  # 有一天，小明和他的狗……
            w.add("有一天，{hero}和{his}{animal}去{to}玩。", "有一天，{hero}和{his}{animal}在{where}{act}。",
                  "有一天，{hero}和{his}{animal}一起出门玩。{they}走啊走，来到了{to}。")
            return True
        if at_place:
            w.add("{time}，{hero}带着{his}{pet}去{to}散步。", "在{where}，{hero}和{his}{pet}正在{act}。")
        else:
            w.add("从前，有一个叫{hero}的{kind}，{he}有一只{pet}。",
                  "从前，有一个叫{hero}的{kind}，{he}养了一只{pet}，{he}们是最好的朋友。",
                  "{hero}有一只{pet}，{he}走到哪里，{pet}就跟到哪里。")
        return at_place
    if at_place:
        if w.slots["place"] in HOMES and not hero_is_child:
            w.add("在{where}，住着一{m}叫{hero}的{kind}。")
        else:
            w.add("在{where}，有一{m}叫{hero}的{kind}正在{act}。", "{time}，{hero}在{where}{act}。")
        return at_place
    w.add("从前，有一{m}叫{hero}的{kind}。", "从前，有一{m}叫{hero}的{kind}，{he}{trait}。",
          "从前，有一{m}叫{hero}的{kind}。{he}{trait}。",
          "{hero}是一{m}{adj}的{kind}。", "很久很久以前，有一{m}{adj}的{kind}，名叫{hero}。")
    return at_place


def go_to_place(w: Writer) -> None:
    w.add("{time}，{duo}{together}去{to}{act}。", "{time}，{duo}{together}来到了{to}。",
          "{time}，{duo}{together}去{to}玩。")
    w.maybe(0.15, "出门前，妈妈说：“早点回来哦！”{hero}说：“知道啦！”")
    w.maybe(0.4, *w.slots["scenery"])


def play(w: Writer) -> None:
    w.maybe(0.6, "{duo}{together}{act2}，玩得可开心了。", "{they}在{where}{act2}，玩得很开心。",
            "{hero}一边{act2}，一边唱着歌。")
    w.maybe(0.2, "{hero}玩得满头大汗，脸蛋红红的。", "{hero}开心得咯咯直笑。")


def finish(w: Writer, p: float = 0.5) -> None:
    w.maybe(p, *ENDINGS)
    w.maybe(0.12, "第二天，{hero}又来到了{to}。{he}想：今天会发生什么有趣的事呢？",
            "睡觉前，{hero}对妈妈说：“明天我还想去{to}！”妈妈笑着点了点头。")


def lost_object(w: Writer, cast: dict) -> None:
    w.add("{hero}有一{obj_m}{obj}，{he}非常喜欢它。", "{hero}最喜欢{his}{obj}了，{he}去哪里都带着它。",
          "妈妈送给{hero}一{obj_m}{obj}，{hero}高兴极了。")
    if not cast["at_place"]:
        go_to_place(w)
    play(w)
    w.add("可是，玩着玩着，{hero}发现{his}{short}不见了！", "突然，{hero}发现{his}{short}不见了！")
    w.add("{hero}急得快要哭了。", "{hero}难过极了。", "{hero}心里很着急。")
    w.maybe(0.3, "{he}想起来，刚才{short}还在{his}身边呢。", "那可是{hero}最喜欢的{short}呀！")
    w.say("{hero}", ("我的{short}在哪里呀？", "{short}，你去哪儿了？"), ("大声喊", "着急地说", "小声说"))
    w.add("{he}在{spot1}找了找，又到{spot2}找了找，可是哪儿都没有。",
          "{he}先在{spot1}找，又去{spot2}找，可是都没有找到。")
    if cast["companion"] == "pet":
        w.add("这时，{pet}{hint}{spot3}。")
        w.add("{hero}跑过去一看，{short}就在那里！")
        w.say("{hero}", ("谢谢你，{pet}！你真棒！", "{pet}，你真是我的好帮手！"), ("抱着{pet}说", "高兴地说"))
    else:
        if cast["companion"] == "friend":
            w.say("{friend}", ("别着急，我帮你一起找。", "我们再找一找吧！"))
        else:
            w.add("这时，一{fm}叫{friend}的{fkind}走了过来。")
            w.say("{friend}", ("你在找什么呀？我帮你一起找吧。", "别着急，我帮你找。"))
        w.add("{hero}和{friend}一起找啊找，终于在{spot3}找到了{short}。", "{friend}弯下腰一看，{short}就在{spot3}！")
        w.say("{hero}", ("谢谢你，{friend}！", "太好了！谢谢你帮我找到了{short}！"), ("高兴地说", "笑着说"))
    w.maybe(0.3, "{hero}把{short}擦得干干净净的，又紧紧地抱在怀里。",
            "回到家，{hero}把这件事告诉了妈妈。妈妈摸摸{hero}的头说：“下次要把东西收好哦。”")
    w.add("从那以后，{hero}总是把{short}放在身边。", "{hero}明白了，东西要收好，才不会弄丢。",
          "{hero}紧紧地抱着{short}，再也不让它跑丢了。")
    finish(w)


def new_friend(w: Writer, cast: dict) -> None:
    if not cast["at_place"]:
        go_to_place(w)
    w.add("{hero}一个人{act2}，觉得有点孤单。", "{hero}看着别人都有伙伴，心里有点孤单。")
    if w.rng.random() < 0.5:
        w.add("这时，{he}看见一{fm}{fkind}坐在{spot1}，看起来也很孤单。",
              "这时，一{fm}{fkind}从{spot1}探出头来，好奇地看着{him}。")
        w.say("{hero}", ("你好！我叫{hero}。你叫什么名字？", "你好呀！你叫什么名字？"), ("走过去说", "笑着问"))
        w.say("{fkind}", ("我叫{friend}。", "我叫{friend}，我刚搬到这里。"), ("小声说", "笑着说"))
    else:
        w.add("这时，一{fm}叫{friend}的{fkind}走了过来。", "这时，{he}遇到了一{fm}叫{friend}的{fkind}。")
    w.say("{hero}", ("你想和我一起{game}吗？", "我们一起{game}吧！"), ("问", "说"))
    w.add("{friend}高兴地点了点头。", "{friend}笑着说：“好呀！”")
    w.maybe(0.3, "“我也一直想交一个朋友。”{friend}说。", "{friend}说：“太好了，我正想找人一起玩呢！”")
    w.add("{hero}和{friend}一起{game}，又一起{act2}，玩得哈哈大笑。", "{hero}和{friend}一起{game}，玩了很久很久。")
    w.maybe(0.4, "{friend}还教{hero}唱了一首好听的歌。", "{hero}把自己最喜欢的{short}拿给{friend}看。",
            "{hero}和{friend}还一起坐在{spot1}，看天上的白云。")
    w.add("{hero}再也不觉得孤单了。", "{hero}心里暖暖的。")
    w.maybe(0.3, "临走的时候，{friend}说：“明天我们还来这里玩，好吗？”“好！”{hero}大声回答。")
    w.add("从那以后，{hero}和{friend}成了最好的朋友。", "太阳下山了，{hero}和{friend}约好明天还要一起玩。",
          "{hero}明白了，勇敢地说一声“你好”，就能交到新朋友。")
    finish(w, 0.3)


def helping(w: Writer, cast: dict) -> None:
    if not cast["at_place"]:
        go_to_place(w)
    play(w)
    if cast["helpee"] == "animal":
        trouble, help_, thanks = w.slots["trouble"], w.slots["help"], w.slots["thanks"]
        w.add("突然，{hero}看见一只" + little(cast["animal"]) + trouble + "。")
        w.say("{hero}", ("别怕，我来帮你！", "可怜的" + little(cast["animal"]) + "，我来帮你吧。"),
              ("跑过去说", "轻轻地说"))
        w.add("{hero}" + help_ + "。")
        w.add(thanks + "。")
    else:
        if cast["companion"] != "friend":
            w.add("这时，{he}看见一{fm}叫{friend}的{fkind}。")
        w.add("{friend}" + w.slots["trouble"] + "。")
        w.say("{hero}", ("别着急，我来帮你！", "{friend}，我来帮你吧！"), ("跑过去说", "大声说"))
        w.add("{hero}" + w.slots["help"] + "。")
        w.say("{friend}", ("谢谢你，{hero}！你真好！", "谢谢你，{hero}！"), ("笑着说", "高兴地说"))
    w.add("{hero}觉得心里暖暖的。", "{hero}开心地笑了。", "看到大家都很开心，{hero}也很开心。")
    w.maybe(0.3, "回家以后，{hero}把这件事讲给妈妈听。妈妈说：“你真是个好孩子！”",
            "那天，{hero}一直哼着歌，脚步也变得轻快了。")
    w.add("{hero}明白了，帮助别人，自己也会很快乐。", "原来，帮助别人是一件这么快乐的事。",
          "从那以后，{hero}更喜欢帮助别人了。")
    finish(w)


def brave(w: Writer, cast: dict) -> None:
    setup, fear, line, overcome, after = w.slots["fear"]
    if not cast["at_place"]:
        go_to_place(w)
    play(w)
    w.add(setup)
    w.add(fear)
    w.maybe(0.3, "{hero}的心怦怦直跳。", "{hero}真想马上回家。")
    w.say("{hero}", (line,), ("小声说", "说"))
    if cast["companion"] == "friend":
        w.say("{friend}", ("别怕，我陪着你。", "别怕，我们一起！"), ("拉着{hero}的手说", "说"))
    elif cast["companion"] == "pet":
        w.add("{pet}蹭了蹭{hero}，好像在说：“别怕，有我呢！”")
    else:
        w.add("{hero}想起了妈妈说过的话：“勇敢的孩子，害怕的时候也会往前走。”",
              "{hero}对自己说：“别怕，我能行！”")
    w.add(overcome)
    w.add(after)
    w.maybe(0.3, "{hero}高兴地跳了起来：“我不怕啦！”", "{hero}笑了，刚才的害怕一下子全跑光了。")
    w.add("从那以后，{hero}变得更勇敢了。", "{hero}明白了，勇敢就是害怕的时候也敢试一试。",
          "{hero}骄傲地说：“我是一{m}勇敢的{kind}！”")
    finish(w)


def sharing(w: Writer, cast: dict) -> None:
    if not cast["at_place"]:
        go_to_place(w)
    w.add("妈妈给{hero}带了{item}。", "{hero}的书包里装着{item}。", "出门前，{hero}带上了{item}。")
    play(w)
    if cast["companion"] != "friend":
        w.add("这时，{hero}看见一{fm}叫{friend}的{fkind}坐在{spot1}，看起来不太开心。")
    w.add("{friend}没有{item_short}，只能在一边看着。", "{friend}看着{hero}的{item_short}，不好意思地低下了头。")
    w.add("{hero}心里想：“这是我最喜欢的{item_short}，我想自己{verb}。”",
          "{hero}想把{item_short}藏起来，一个人{verb}。")
    w.add("可是看到{friend}的样子，{hero}改变了主意。", "可是{hero}想了想，觉得这样不好。")
    w.say("{hero}", ("{friend}，我们一起{verb}吧！", "给你，我们一起{verb}！"), ("走过去说", "笑着说"))
    w.say("{friend}", ("真的吗？谢谢你，{hero}！", "谢谢你，{hero}，你真好！"), ("高兴地说", "笑着说"))
    w.add("{hero}和{friend}一起{verb}着{item_short}，{item_short}好像变得{better}。")
    w.maybe(0.3, "后来，{friend}也拿出了自己的{gift}，和{hero}一起分享。", "{they}一边{verb}，一边说说笑笑。")
    w.add("{hero}明白了，和朋友分享，快乐就会变成两份。", "分享的感觉真好！", "从那以后，{hero}和{friend}什么都一起分享。")
    finish(w)


def weather(w: Writer, cast: dict) -> None:
    if not cast["at_place"]:
        go_to_place(w)
    play(w)
    kind = w.rng.choice(("rain", "snow", "wind"))
    if kind == "rain":
        w.add("突然，天空变得灰蒙蒙的，哗啦啦地下起了大雨。", "忽然，一朵乌云飘过来，下起了大雨。")
        w.add("{they}赶紧跑到{shelter}躲雨。")
        w.say("{hero}", ("雨什么时候才停呀？", "衣服都湿了！"), ("问", "说"))
        w.add("过了一会儿，雨停了，太阳又出来了。")
        w.add("天边出现了一道美丽的彩虹。")
        w.say("{hero}", ("快看，彩虹！", "哇，好漂亮的彩虹！"), ("高兴地叫起来", "指着天空说"))
        w.add("{they}看着彩虹，觉得下雨也是一件好事。", "{hero}觉得，雨后的{place}比平时更漂亮了。")
    elif kind == "snow":
        w.add("突然，天上飘起了雪花。", "忽然，天变冷了，天上飘下了白白的雪花。")
        w.add("雪越下越大，不一会儿，到处都是白白的一片。")
        w.say("{hero}", ("下雪啦！来堆雪人吧！", "哇，下雪了！"), ("高兴地叫起来", "大声说"))
        w.add("{they}{together}堆了一个大大的雪人，还用树枝给雪人做了两只手。")
        w.say("{hero}", ("雪人，你好！", "雪人，你冷不冷呀？"), ("笑着说",))
        w.add("这真是一个意外的惊喜！", "{hero}的小手冻得红红的，心里却热乎乎的。")
    else:
        w.add("突然，刮起了一阵大风。", "忽然，呼呼地刮起了大风，树叶都跳起了舞。")
        w.add("风把{hero}的帽子吹走了！")
        w.add("{they}追着帽子跑啊跑，最后在{spot1}找到了它。")
        w.say("{hero}", ("风这么大，正好放风筝！", "大风真调皮！"), ("笑着说", "喘着气说"))
        w.add("那天，{hero}觉得大风也没有那么讨厌了。", "大风吹得{hero}的脸红扑扑的，{he}笑得停不下来。")
    finish(w)


def try_again(w: Writer, cast: dict) -> None:
    want, fail, success = w.slots["task"]
    if not cast["at_place"]:
        go_to_place(w)
    w.add(want)
    w.add(fail)
    w.add("{hero}有点难过。", "{hero}有点想放弃了。", "{hero}撅起了小嘴。")
    if cast["companion"] == "friend":
        w.say("{friend}", ("别放弃，再试一次吧！", "没关系，我们再来一次！"), ("说", "拍拍{hero}说"))
    elif cast["companion"] == "pet":
        w.add("{pet}在旁边转来转去，好像在给{hero}加油。")
    else:
        w.add("{hero}对自己说：“再试一次！”")
    w.maybe(0.5, "{he}又试了一次，还是不行。", "第二次也没有成功。")
    w.add(success)
    w.add("{hero}高兴得拍起了手。", "{hero}高兴得跳了起来。")
    w.say("{hero}", ("我做到了！", "我成功啦！"), ("大声说", "笑着说"))
    if cast["companion"] == "friend":
        w.maybe(0.5, "{friend}也在旁边为{hero}拍手。")
    w.maybe(0.3, "{hero}又试了好几次，一次比一次好。", "{hero}心里美滋滋的。")
    w.add("{hero}明白了，只要不放弃，就一定能做到。", "原来，多试几次就能成功。")
    finish(w)


SHAPE_WRITERS = {
    "lost_object": lost_object,
    "new_friend": new_friend,
    "helping": helping,
    "brave": brave,
    "sharing": sharing,
    "weather": weather,
    "try_again": try_again,
}


def choose_cast(rng: random.Random, shape: str) -> dict:
    """Who is in the story and who is there from the first sentence on."""
    hero = make_character(rng, child=rng.random() < 0.85)
    friend = make_character(rng, child=hero.is_child, taken=(hero.name, hero.kind))
    # The companion starts the story with the hero; a friend who is not a companion is
    # introduced later with 叫 (new_friend always, the others when they need a friend).
    companions = ["", "friend", "pet"] if hero.is_child else ["", "friend"]
    if shape == "new_friend":
        companions = [""]  # the hero starts alone and lonely
    if shape == "sharing":
        companions = ["friend", ""]
    companion = rng.choice(companions)
    helpee = None
    if shape == "helping":
        # An animal in trouble only meets a hero who came alone, so a story has one animal.
        helpee = "animal" if companion == "" and rng.random() < 0.6 else "friend"
    animal = rng.choice(PETS) if companion == "pet" else None
    if helpee == "animal":
        animal = rng.choice([p[0] for p in ANIMAL_PROBLEMS if little(p[0]) != hero.kind])
    # A hero who starts alone meets a friend (by 叫) in these shapes.
    friend_joins = companion == "" and shape in ("new_friend", "sharing", "lost_object")
    uses_friend = companion == "friend" or helpee == "friend" or friend_joins
    return {"hero": hero, "friend": friend if uses_friend else None, "companion": companion,
            "animal": animal, "helpee": helpee}


def fill_slots(rng: random.Random, cast: dict, place: str) -> dict:
    hero, friend, animal = cast["hero"], cast["friend"], cast["animal"]
    where, category = PLACE_INFO[place]
    act, act2 = rng.sample(ACTIVITIES[category], 2)
    spot1, spot2, spot3 = rng.sample(SPOTS[category], 3)
    obj, obj_m, short = rng.choice(OBJECTS)
    item, item_short, verb, better = rng.choice(SHAREABLES)
    gift = rng.choice(("小画书", "彩色铅笔", "小贴纸", "橘子"))
    slots = dict(
        hero=hero.name, he=hero.pronoun, him=hero.pronoun, his=hero.pronoun + "的", kind=hero.kind,
        m=hero.measure, place=place, where=where, to=place if where.endswith("里") else where,
        act=act, act2=act2, game=rng.choice(GAMES + (act,)), time=rng.choice(TIMES),
        feeling=rng.choice(FEELINGS), trait=rng.choice(TRAITS), adj=rng.choice(ADJECTIVES), spot1=spot1, spot2=spot2, spot3=spot3,
        shelter=rng.choice(SHELTERS[category]), obj=obj, obj_m=obj_m, short=short,
        item=item, item_short=item_short, verb=verb, better=better, gift=gift,
        animal=animal or "", pet=little(animal) if animal else "", hint=PET_HINTS.get(animal, ""),
        friend="", fhe="", fkind="", fm="",
    )
    if friend:
        slots.update(friend=friend.name, fhe=friend.pronoun, fkind=friend.kind, fm=friend.measure)
    # Who goes along: "小明和小狗一起去公园" or just "小明去公园".
    partner = {"friend": slots["friend"], "pet": slots["pet"]}.get(cast["companion"], "")
    slots["duo"] = f"{hero.name}和{partner}" if partner else hero.name
    slots["together"] = "一起" if partner else ""
    both_girls = hero.pronoun == "她" and cast["companion"] == "friend" and friend.pronoun == "她"
    slots["they"] = ("她们" if both_girls else "他们") if partner else hero.pronoun
    # Shape-specific material, filled in now so every slot is drawn from the same stream.
    if cast["helpee"] == "animal":
        _, trouble, help_, thanks = next(p for p in ANIMAL_PROBLEMS if p[0] == animal)
        slots.update(trouble=trouble, help=help_.format(**slots), thanks=thanks.format(**slots))
    elif cast["helpee"] == "friend":
        trouble, help_ = rng.choice(FRIEND_PROBLEMS)
        slots.update(trouble=trouble, help=help_.format(**slots))
    slots["fear"] = rng.choice(FEARS["any"] + FEARS[category])
    slots["scenery"] = SCENERY[category] + SCENERY["any"]
    slots["task"] = rng.choice([t[1:] for t in TASKS if category in t[0]])
    return slots


def generate_story(rng: random.Random) -> dict:
    """One story: {"text", "names" (in order of introduction), "place", "animal", "shape"}.
    "animal" is the pet or the animal helped, None when there is none besides the hero."""
    shape = rng.choice(SHAPES)
    place = rng.choice(PLACES)
    cast = choose_cast(rng, shape)
    slots = fill_slots(rng, cast, place)
    w = Writer(rng, slots)
    cast["at_place"] = open_story(w, cast["companion"])
    SHAPE_WRITERS[shape](w, cast)
    names = [cast["hero"].name] + ([cast["friend"].name] if cast["friend"] else [])
    return {"text": w.text(), "names": names, "place": place, "animal": cast["animal"], "shape": shape}


def generate_stories(num_stories: int, seed: int) -> Iterator[dict]:
    """num_stories stories; story i depends only on (seed, i)."""
    for i in range(num_stories):
        yield generate_story(random.Random(f"{seed}:{i}"))


def write_jsonl(path, num_stories: int, seed: int, text_field: str = "text") -> None:
    """One JSON object per line, {text_field: story text}, UTF-8 and unescaped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for story in generate_stories(num_stories, seed):
            f.write(json.dumps({text_field: story["text"]}, ensure_ascii=False) + "\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write seeded Chinese children's stories as JSONL.")
    parser.add_argument("--num-stories", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", required=True, help="output .jsonl path")
    parser.add_argument("--text-field", default="text", help="JSON key of the story text")
    args = parser.parse_args(argv)
    write_jsonl(args.out, args.num_stories, args.seed, args.text_field)


if __name__ == "__main__":
    main()
