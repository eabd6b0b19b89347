"""The stage table (storylm/plan/stages.py): pinned hashes, what each setting invalidates, and the table against
what its fingerprints really read. No stage runs here."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO, changed, copy_workflow, snakemake
from storylm import config_docs
from storylm.plan import added_keys, schema, stages
from storylm.plan.runs import deep_merge, load_config, plan
from storylm.plan.schema import validate

SCHEMA = str(REPO / "config" / "schema.yaml")


def default_config() -> dict:
    config = validate(load_config(root=REPO))
    del config["runs"]
    return config


# ---------------------------------------------------------------------------
# Pinned: the folders of the shipped configs. A user's trained models live in these folders; a
# change here makes every user retrain, so it must be deliberate, said in the commit, and updated here.

PINNED = {
    # precision's default became auto (bf16-mixed on a CPU with bf16 instructions; docs/experiments.md,
    # "bf16-mixed on the CPU"): the default's pretrain and what reads it moved once, on purpose (issue 32).
    (): {"corpus": "e34e4fb7fe", "tokenizer": "580b9be183", "shards": "9310c0e430", "pretrain": "c78e0d627a",
         "evaluate": "59b73c66a3", "sample": "2769f27ae3", "export": "288707e08e"},
    ("config/microstories.yaml",): {
        "download": "bff869ee32", "tokenizer_download": "d736acf3e3", "corpus": "c8bf15a0ce",
        "tokenizer": "cfccba79fe", "shards": "d90ea2c002", "pretrain": "ee94c536c1", "evaluate": "a0971783b7",
        "sample": "01559b290e", "export": "45ecbdeb71"},
}

PINNED_SWEEPS = {
    "config/sweeps/model_size.yaml": {"pretrain": {"1bfe6dcb1d", "5804d8e95c", "82a8ac7f94", "c78e0d627a"},
                                      "sample": {"1be02dfe25", "20621f4b89", "2769f27ae3", "6d2caebcfb"}},
    "config/sweeps/tokenizer.yaml": {"tokenizer": {"567e2a8f17", "580b9be183", "e17fa2c5ac", "e9095d0da4"},
                                     "pretrain": {"052f9f34c3", "83404dc3b1", "a17b8992d8", "c78e0d627a"}},
    "config/sweeps/budget.yaml": {"pretrain": {"3d9b26041f", "4cbd1d7659", "b1000b6096", "c78e0d627a",
                                               "e9f5d05821"}},
}


# The stages there were when the folders were pinned: a stage added since (a leaf, or one that runs only when
# a new key asks for it) moves none of their folders and may plan folders of its own.
PINNED_STAGES = ("download", "corpus", "tokenizer_download", "tokenizer", "shards", "pretrain", "evaluate", "sample",
                 "export")
PINNED_PARENTS = {stages.BY_NAME[name].parent for name in PINNED_STAGES}


@pytest.mark.parametrize("files", list(PINNED), ids=lambda files: files[0] if files else "default")
def test_the_shipped_configs_keep_their_stage_folders(files):
    the_plan = plan(load_config(files, root=REPO))
    assert {stage: set(by_hash) for stage, by_hash in the_plan.stages.items() if stage in PINNED_STAGES} == \
        {stage: {hash_} for stage, hash_ in PINNED[files].items()}


@pytest.mark.parametrize("sweep", list(PINNED_SWEEPS))
def test_the_sweeps_keep_their_stage_folders(sweep):
    """Every folder a sweep had stays one of its folders (model_size.yaml gained seeds 1 and 2 beside 42)."""
    the_plan = plan(load_config([sweep], root=REPO))
    for stage, hashes in PINNED_SWEEPS[sweep].items():
        assert hashes <= set(the_plan.stages[stage]), stage
        assert len(the_plan.stages[stage]) == len(hashes) * len(the_plan.seeds[next(iter(the_plan.runs))]), stage


@pytest.mark.parametrize("files", list(PINNED), ids=lambda files: files[0] if files else "default")
def test_snakemake_plans_exactly_these_folders(tmp_path, files):
    """The dry run as a user sees it: the rules' input functions name the table's folders."""
    workdir = copy_workflow(tmp_path / "wf")
    args = [arg for name in files for arg in ("--configfile", name)]
    dry_run = snakemake(workdir, "--dry-run", *args).stdout
    planned = {folder for folder in re.findall(r"(?:Data|results)/[a-z_]+/[0-9a-f]{10}\b", dry_run)
               if folder.rsplit("/", 1)[0] in PINNED_PARENTS}
    assert planned == {stages.folder(stage, hash_) for stage, hash_ in PINNED[files].items()}


# ---------------------------------------------------------------------------
# What a setting invalidates

def changed_stages(before: dict, after: dict) -> set[str]:
    a, b = stages.hashes(before), stages.hashes(after)
    return {stage for stage in a if a[stage] != b[stage]}


def test_key_order_does_not_change_hashes():
    config = default_config()
    reordered = {key: config[key] for key in reversed(list(config))}
    reordered["model_config"] = dict(reversed(list(config["model_config"].items())))
    assert stages.hashes(reordered) == stages.hashes(config)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("sample.temperature", 0.9, {"sample", "export"}),
        ("sample.prompts", ["在森林里"], {"sample", "export"}),
        ("evaluate.batch_size", 4, {"evaluate", "export"}),
        ("export.license", "mit", {"export"}),
        ("model_config.n_layer", 3, {"pretrain", "evaluate", "sample", "export"}),
        ("optimizer.init_args", {"lr": 0.001, "weight_decay": 0.1, "betas": [0.9, 0.95]},
         {"pretrain", "evaluate", "sample", "export"}),
        ("shards.chunk_bytes", "8MB", {"shards", "pretrain", "evaluate", "sample", "export"}),
        ("tokenizer.vocab_size", 1024, {"tokenizer", "shards", "pretrain", "evaluate", "sample", "export"}),
        ("corpus.split.val_size", 200,
         {"corpus", "tokenizer", "shards", "pretrain", "evaluate", "sample", "export"}),
        ("corpus.builtin.seed", 5, {"corpus", "tokenizer", "shards", "pretrain", "evaluate", "sample", "export"}),
        # Settings of sources that are not in use, and encoding batch sizes, change nothing.
        ("corpus.hf.repo_id", "someone/else", set()),
        ("corpus.text_field", "story_zh", set()),
        ("tokenizer.hf.repo_id", "someone/else", {"tokenizer_download"}),  # not used: no job has this hash
        ("logger_name", "tensorboard", {"pretrain", "evaluate", "sample", "export"}),
    ],
)
def test_a_setting_invalidates_its_stage_and_downstream_only(key, value, expected):
    config = default_config()
    assert changed_stages(config, changed(config, key, value)) & set(PINNED_STAGES) == expected
    # config/README.md never promises less than what really reruns.
    assert expected <= set(stages.reruns(key)[0])


def test_switching_back_gives_the_earlier_hashes():
    config = default_config()
    there = changed(config, "model_config.n_layer", 4)
    back = changed(there, "model_config.n_layer", config["model_config"]["n_layer"])
    assert stages.hashes(back) == stages.hashes(config)


def test_pretrained_tokenizer_is_hashed_by_content(tmp_path):
    """Two copies of one tokenizer folder hash alike; a changed file changes the hash."""
    from storylm.stories.storygen import generate_stories
    from storylm.tokenizer import train_bpe

    config = changed(default_config(), "tokenizer.kind", "pretrained")
    copy_a, copy_b = tmp_path / "a", tmp_path / "b"
    train_bpe((story["text"] for story in generate_stories(50, seed=1)), 300, 2, copy_a)
    copy_b.mkdir()
    for f in copy_a.iterdir():
        (copy_b / f.name).write_bytes(f.read_bytes())
    a = stages.hashes(changed(config, "tokenizer.path", str(copy_a)))
    b = stages.hashes(changed(config, "tokenizer.path", str(copy_b)))
    assert a == b
    (copy_b / "README.md").write_text("not a file litgpt reads")
    assert stages.hashes(changed(config, "tokenizer.path", str(copy_b))) == a
    tokenizer_config = copy_b / "tokenizer_config.json"
    tokenizer_config.write_text(tokenizer_config.read_text().replace('"add_bos_token": false', '"add_bos_token": true'))
    assert stages.hashes(changed(config, "tokenizer.path", str(copy_b)))["tokenizer"] != a["tokenizer"]


def test_stage_record_names_its_inputs():
    record = stages.records(default_config())["shards"]
    assert set(record["inputs"]) == {"corpus", "tokenizer"}
    assert record["config"] == {"chunk_bytes": "16MB"}


def test_records_until_a_stage_are_the_first_records_and_no_more(tmp_path, monkeypatch):
    """config.tokenizer_at_hand needs the tokenizer's hash only: it computes the records up to it, the same
    as the full records, and hashes no file a later stage's fingerprint reads (an extra set)."""
    extra = tmp_path / "mine.jsonl"
    extra.write_text('{"text": "从前。"}\n', encoding="utf-8")
    config = default_config()
    config["evaluate"]["extra_sets"] = [{"name": "mine", "path": str(extra)}]
    hashed = []
    monkeypatch.setattr(stages, "file_sha256", lambda path: hashed.append(Path(path)) or "0" * 64)
    early = stages.records(config, until="tokenizer")
    assert list(early) == list(stages.ORDER[:stages.ORDER.index("tokenizer") + 1]) and hashed == []
    assert early == {name: record for name, record in stages.records(config).items() if name in early}
    assert hashed == [extra]


# ---------------------------------------------------------------------------
# The table against what the fingerprints really read


class Tracked(dict):
    """A config section that notes the dotted key of every value read from it."""

    def __init__(self, data: dict, prefix: str, seen: set[str]):
        super().__init__({key: Tracked(value, f"{prefix}{key}.", seen) if isinstance(value, dict) else value
                          for key, value in data.items()})
        self.prefix, self.seen = prefix, seen

    def __getitem__(self, key):
        self.seen.add(self.prefix + key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.seen.add(self.prefix + key)
        return super().get(key, default)


def configs_of_every_kind(tmp_path: Path) -> list[dict]:
    """Configs that together take every branch of the fingerprints."""
    local = tmp_path / "stories"
    local.mkdir()
    (local / "a.jsonl").write_text('{"text": "从前"}\n', encoding="utf-8")
    extra = tmp_path / "extra.txt"
    extra.write_text("一个故事\n", encoding="utf-8")
    tokenizer_dir = tmp_path / "tok"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "tokenizer.json").write_text("{}")
    base = default_config()
    return [
        base,
        changed(changed(base, "corpus.source", "local"), "corpus.local.paths", [str(local)]),
        changed(base, "corpus.source", "url"),
        changed(changed(base, "corpus.source", "hf"), "logger_name", "wandb"),
        changed(changed(changed(base, "tokenizer.kind", "pretrained"), "tokenizer.source", "hf"),
                "evaluate.extra_sets", [{"path": str(extra), "text_field": "text", "name": None}]),
        changed(changed(base, "tokenizer.kind", "pretrained"), "tokenizer.path", str(tokenizer_dir)),
        changed(base, "devices", 2),  # several processes: the strategy counts
    ]


def read_keys(spec: stages.StageSpec, config: dict) -> set[str]:
    """The dotted keys of the values a fingerprint uses whole (not just to look further inside)."""
    seen: set[str] = set()
    spec.fingerprint(Tracked(config, "", seen))
    return {key for key in seen if not any(other.startswith(key + ".") for other in seen)}


def covered(key: str, reads) -> bool:
    return any(key == read or key.startswith(read + ".") for read in reads)


def test_each_stage_declares_every_key_its_fingerprint_reads(tmp_path):
    used = {spec.name: set() for spec in stages.STAGES}
    for config in configs_of_every_kind(tmp_path):
        for spec in stages.STAGES:
            keys = read_keys(spec, config)
            assert all(covered(key, spec.reads) for key in keys), (spec.name, keys - set(spec.reads))
            used[spec.name] |= keys
    # And declares nothing it never reads.
    for spec in stages.STAGES:
        for read in spec.reads:
            assert any(key == read or key.startswith(read + ".") or read.startswith(key + ".")
                       for key in used[spec.name]), (spec.name, read)


def test_each_stage_reads_only_stages_above_it():
    for index, spec in enumerate(stages.STAGES):
        assert set(spec.inputs) <= set(stages.ORDER[:index]), spec.name


def test_the_reruns_column_is_derived_from_the_table():
    assert config_docs.reruns("sample.temperature") == "sample → export"
    assert config_docs.reruns("seed") == "pretrain → evaluate, sample → export"
    # (A stage added since that reads the corpus joins this chain.)
    assert config_docs.reruns("corpus.hf.revision").startswith("download → corpus → tokenizer")
    assert config_docs.reruns("corpus.hf.revision").endswith(
        " → shards → pretrain → evaluate, sample → export (when corpus.source is hf)")
    assert config_docs.reruns("tokenizer.hf.files").startswith("tokenizer download → tokenizer → shards")
    assert config_docs.reruns("runs.small") == config_docs.META_KEYS["runs"]


def test_every_schema_key_reruns_something():
    """A key no stage reads and no META_KEYS entry explains would be a setting that does nothing."""
    from storylm.plan.schema import load_schema

    def leaves(properties: dict, prefix: str = ""):
        for key, spec in properties.items():
            if spec.get("type") == "object" and "properties" in spec:
                yield from leaves(spec["properties"], f"{prefix}{key}.")
            else:
                yield prefix + key

    for key in leaves(load_schema()["properties"]):
        if key.split(".")[0] in config_docs.META_KEYS:
            continue  # settings of the runs, not of a stage: their text is checked above
        names, _ = stages.reruns(key)
        assert names and set(names) <= set(stages.ORDER), key
    with pytest.raises(KeyError, match="no_such_section.key: no stage reads it"):
        config_docs.reruns("no_such_section.key")


# ---------------------------------------------------------------------------
# The table drives the rules: folders, edges and order come from it, not from the rule files

RULES = sorted((REPO / "workflow/rules").glob("*.smk"))


def rule_names(path: Path) -> list[str]:
    return re.findall(r"^(?:local)?rule (\w+):", path.read_text(encoding="utf-8"), flags=re.M)


def test_no_rule_file_spells_a_stage_folder_or_file():
    """Outputs are stage_outputs(stage, roles...), inputs stage_inputs or role(stage, role): a folder or a file
    moves in the table alone, and no rule turns a file back into a folder."""
    parents = {spec.parent for spec in stages.STAGES}
    names = {name for spec in stages.STAGES for name in spec.provides.values() if isinstance(name, str)}
    for path in RULES:
        text = path.read_text(encoding="utf-8")
        for parent in parents:
            assert f"{parent}/" not in text, f"{path.name} spells {parent}/"
        stage_rules = path.name not in ("common.smk", "report.smk")  # those two gather a training's results
        for name in names if stage_rules else ():
            assert f'"{name}"' not in text and f"/{name}" not in text, f"{path.name} spells {name}"
        assert not re.search(r"\)\.parent\b|input_dir|output_dir", text), path.name


# A run with every optional stage (a downloaded corpus, a hub tokenizer), and one with none.
EVERY_STAGE = {"corpus": {"source": "hf"}, "tokenizer": {"kind": "pretrained", "source": "hf"}}
FEWEST_STAGES = {"corpus": {"source": "builtin"}, "tokenizer": {"kind": "train", "source": "local"}}


def test_every_role_a_stage_reads_comes_from_a_stage_it_reads():
    """Each role a stage uses resolves to a stage in its inputs or reads_through (so every edge a command
    reads is in the table), or to itself (an earlier step's file); a role that only a stage some runs lack
    provides is no input of those runs; and each role the rules name is one the table has."""
    for spec in stages.STAGES:
        for role in spec.uses:
            if role not in spec.provides:
                assert stages.provider(spec.name, role, EVERY_STAGE) in spec.inputs + spec.reads_through, role
    assert stages.provider("corpus", "raw files", EVERY_STAGE) == "download"
    assert stages.provider("corpus", "raw files", FEWEST_STAGES) is None
    assert stages.provider("tokenizer", "hub tokenizer", FEWEST_STAGES) is None
    assert stages.provider("sample", "tokenizer", FEWEST_STAGES) == "tokenizer"
    assert stages.provider("export", "val split", FEWEST_STAGES) == "corpus"
    rules = "".join(p.read_text(encoding="utf-8") for p in RULES)
    named = set(re.findall(r'"([\w ]+)"', " ".join(re.findall(r"\b(?:role|stage_inputs|stage_outputs)\([^)]*\)", rules))))
    named |= set(re.findall(r'^    "\w+": "([\w ]+)",$', rules, flags=re.M))  # common.smk's RUN_INPUTS
    every_role = {role for spec in stages.STAGES for role in spec.provides}
    assert named - set(stages.ORDER) - {"sample", "prompt tokens"} <= every_role


def test_the_plan_resolves_each_folders_files_by_role():
    """The plan gives each stage folder the files it reads, by role, in the folders it was built from:
    the downloads' manifests only to the runs that have them."""
    the_plan = plan(load_config(root=REPO), check_values=False)
    hashes = the_plan.run_hashes("default")
    assert the_plan.files("corpus", hashes["corpus"]) == {}  # builtin stories: no download
    assert the_plan.files("tokenizer", hashes["tokenizer"]) == {
        "train split": f"Data/corpus/{hashes['corpus']}/train.jsonl", "val split": f"Data/corpus/{hashes['corpus']}/val.jsonl"}
    assert the_plan.files("shards", hashes["shards"]) == {
        "train split": f"Data/corpus/{hashes['corpus']}/train.jsonl", "val split": f"Data/corpus/{hashes['corpus']}/val.jsonl",
        "tokenizer": f"Data/tokenizer/{hashes['tokenizer']}/tokenizer_config.json"}
    assert the_plan.files("sample", hashes["sample"], ("prompt tokens", "final model")) == {
        "prompt tokens": f"results/sample/{hashes['sample']}/prompt_tokens.json",
        "final model": f"results/pretrain/{hashes['pretrain']}/final/lit_model.pth"}
    downloaded = plan(load_config(["config/microstories.yaml"], root=REPO), check_values=False)
    hashes = downloaded.run_hashes("default")
    assert downloaded.files("corpus", hashes["corpus"]) == {"raw files": f"Data/raw/{hashes['download']}/manifest.json"}
    assert downloaded.files("tokenizer", hashes["tokenizer"])["hub tokenizer"] == \
        f"Data/raw/{hashes['tokenizer_download']}/manifest.json"


def test_a_stage_put_in_between_is_found_by_role(monkeypatch):
    """A dedup stage between corpus and tokenizer that provides the splits: the tokenizer's role("train
    split") finds it without a rule naming it."""
    dedup = stages.StageSpec("dedup", "Data/dedup", ("corpus",), lambda config: {}, {},
                             provides={"train split": "train.jsonl", "val split": "val.jsonl"})
    tokenizer = stages.BY_NAME["tokenizer"]
    moved = stages.StageSpec(tokenizer.name, tokenizer.parent, ("dedup", "tokenizer_download"), tokenizer.fingerprint,
                             tokenizer.reads, provides=tokenizer.provides)
    monkeypatch.setattr(stages, "BY_NAME", {**stages.BY_NAME, "dedup": dedup, "tokenizer": moved})
    monkeypatch.setattr(stages, "ORDER", ("download", "corpus", "dedup", *stages.ORDER[2:]))
    assert stages.provider("tokenizer", "train split", EVERY_STAGE) == "dedup"
    assert stages.provider("tokenizer", "hub tokenizer", EVERY_STAGE) == "tokenizer_download"
    with pytest.raises(KeyError, match="tokenizer reads 'corpus stats' from corpus: add corpus to its inputs"):
        stages.provider("tokenizer", "corpus stats", EVERY_STAGE)


def test_an_optional_stage_is_an_input_only_of_the_runs_that_have_it(monkeypatch):
    """A stage only some runs have (a continued pretraining from another run's final model) that provides the
    final model: evaluate, sample and export of a run that has it read its model, every other run's read
    pretrain's, and their hashes hold it only when they read it."""
    pretrain = stages.BY_NAME["pretrain"]
    cont = stages.StageSpec("continue", "results/continue", ("pretrain", "shards"), lambda config: config.get("continue") or {},
                            {"continue": None}, needed=lambda config: bool(config.get("continue")),
                            provides={"final model": "final/lit_model.pth"}, uses=("final model", "shards"))
    table = {**stages.BY_NAME, "continue": cont}
    for name in ("evaluate", "sample", "export"):
        spec = stages.BY_NAME[name]
        table[name] = stages.StageSpec(spec.name, spec.parent, ("continue", *spec.inputs), spec.fingerprint, spec.reads,
                                       provides=spec.provides, reads_through=spec.reads_through, uses=spec.uses)
    order = (*stages.ORDER[:stages.ORDER.index("pretrain") + 1], "continue", *stages.ORDER[stages.ORDER.index("pretrain") + 1:])
    monkeypatch.setattr(stages, "BY_NAME", table)
    monkeypatch.setattr(stages, "ORDER", order)
    monkeypatch.setattr(stages, "STAGES", tuple(table[name] for name in order))
    plain, continued = default_config(), {**default_config(), "continue": {"steps": 10}}
    for name in ("evaluate", "sample", "export"):
        assert stages.provider(name, "final model", plain) == "pretrain"
        assert stages.provider(name, "final model", continued) == "continue"
    folders = {"pretrain": "P", "continue": "C", "shards": "S", "corpus": "D", "tokenizer": "T"}
    # It reads the final model it starts from upstream, though it provides one itself.
    assert stages.files("continue", continued, folders.get)["final model"] == "P/final/lit_model.pth"
    assert stages.files("evaluate", plain, folders.get)["final model"] == "P/final/lit_model.pth"
    assert stages.files("evaluate", continued, folders.get)["final model"] == "C/final/lit_model.pth"
    plain_records, continued_records = stages.records(plain), stages.records(continued)
    assert "continue" not in plain_records["evaluate"]["inputs"]
    assert continued_records["evaluate"]["inputs"]["continue"] == continued_records["continue"]["hash"]
    assert stages.inputs("evaluate", plain) == ["pretrain", "shards", "corpus"]
    assert pretrain.provides["final model"] == "final/lit_model.pth"


# Names of stage files that are a library's (litgpt's checkpoint, litdata's index, a Hugging Face tokenizer's and
# model's): their owners are the modules that read and write those formats.
LIBRARY_NAMES = {"lit_model.pth", "hyperparameters.yaml", "index.json", "tokenizer_config.json", "model.safetensors"}
# Modules that spell a name by right: the owners the table imports it from, and the report, whose run results
# (results/runs/<run>/seed-<seed>/) are its own files under the same names.
OWNERS = {"io/manifest.py": "manifest.json", "model/training_runner.py": "train.log",
          "report.py": "metrics.json story_scores.tsv"}


def test_no_module_outside_the_table_spells_a_stage_files_name():
    """A command gets its files by role (storylm.plan.stage StageFiles) or names one in a folder through the table
    (stage_file): a stage file is renamed in the table alone."""
    names = {path.rsplit("/", 1)[-1] for spec in stages.STAGES for path in spec.provides.values()} - LIBRARY_NAMES
    package = REPO / "workflow/storylm"
    for path in package.rglob("*.py"):
        module = path.relative_to(package).as_posix()
        if module == "plan/stages.py":
            continue
        text = path.read_text(encoding="utf-8")
        for name in names - set(OWNERS.get(module, "").split()):
            assert not re.search(rf"""["'/]{re.escape(name)}["']""", text), f"{module} spells {name}"


def test_each_stage_has_its_rule_file_included_in_the_order_of_the_table():
    """The Snakefile includes the table's rule files in its order (common.smk STAGE_RULE_FILES); each holds a
    rule named after its stage, and none numbers the stages (the table is the one place of their order)."""
    snakefile = (REPO / "Snakefile").read_text(encoding="utf-8")
    assert "for rule_file in STAGE_RULE_FILES:" in snakefile
    assert re.findall(r'^include: "(.+)"', snakefile, flags=re.M) == ["workflow/rules/common.smk",
                                                                      "workflow/rules/report.smk"]
    generic = (REPO / "workflow/rules" / stages.GENERIC_RULES).read_text(encoding="utf-8")
    for spec in stages.STAGES:
        if spec.rule_file.endswith(stages.GENERIC_RULES):  # its rule is named after it there
            assert "name:\n                spec.name" in generic
        else:
            assert spec.name in rule_names(REPO / spec.rule_file), spec.name
    assert stages.BY_NAME["export"].rule_file == f"workflow/rules/{stages.GENERIC_RULES}"
    for path in RULES:
        assert not re.search(r"\bStage \d", path.read_text(encoding="utf-8")), path.name
    assert {REPO / spec.rule_file for spec in stages.STAGES} | {REPO / "workflow/rules/common.smk",
                                                               REPO / "workflow/rules/report.smk"} == set(RULES)


def test_the_samples_header_and_the_seeds_chain_come_from_the_table():
    assert [n for n in stages.ancestors("sample") if stages.always_needed(n)] == [
        "corpus", "tokenizer", "shards", "pretrain"]  # the samples.txt header's stages (common.smk LINEAGE)
    assert config_docs.META_KEYS["seeds"].startswith("pretrain → evaluate, sample → export of the added seeds")


# ---------------------------------------------------------------------------
# A key added to the schema moves no folder at its default, in any section (storylm.plan.added_keys)

ADDED = "a_key_added_later"
# The key added, its default and a value away from it; model_config and the optimizer's arguments take litgpt's
# and torch's own (the config checks refuse a name they do not know).
ADDED_KEY = {"model_config": ("lm_head_bias", False, True), "optimizer.init_args": ("eps", 1e-8, 1e-6)}


def added_key(section: str) -> tuple:
    return ADDED_KEY.get(section, (ADDED, 7, 8))

# Every section of the schema (an object with keys; TOP the top level, [] a list's items), the stage a key
# added to it belongs to, and the config that has the section in use.
SECTIONS = {
    added_keys.TOP: ("pretrain", "default"), "corpus": ("corpus", "default"),
    "corpus.builtin": ("corpus", "default"), "corpus.split": ("corpus", "default"),
    "corpus.hf": ("download", "hub"), "corpus.url": ("download", "url"),
    "corpus.url.files[]": ("download", "url"), "corpus.local": ("download", "local"),
    "tokenizer": ("tokenizer", "default"), "tokenizer.hf": ("tokenizer_download", "hub"),
    "shards": ("shards", "default"), "model_config": ("pretrain", "default"), "train": ("pretrain", "default"),
    "eval": ("pretrain", "default"), "optimizer": ("pretrain", "default"),
    "optimizer.init_args": ("pretrain", "default"), "evaluate": ("evaluate", "default"),
    "evaluate.extra_sets[]": ("evaluate", "extra set"), "sample": ("sample", "default"), "export": ("export", "default"),
}


def schema_sections(spec: dict, path: str = added_keys.TOP):
    if "properties" in spec:
        yield path
    for key, sub in spec.get("properties", {}).items():
        yield from schema_sections(sub, added_keys.join(path, key))
    if isinstance(spec.get("items"), dict):
        yield from schema_sections(spec["items"], path + added_keys.ITEMS)


def steps(path: str) -> list[str]:
    return [part for part in path.replace("[]", ".[]").split(".") if part]


def add_key_to_schema(monkeypatch, section: str) -> None:
    """config/schema.yaml as if a key (added_key) had been added to `section` after the pins."""
    fake = copy.deepcopy(schema.load_schema())
    spec = fake
    for part in steps(section):
        spec = spec["items"] if part == "[]" else spec["properties"][part]
    key, default, _ = added_key(section)
    spec["properties"][key] = {"default": default, "description": "Added after the pins."}
    monkeypatch.setattr(schema, "load_schema", lambda path=None: fake)


def set_added(config: dict, section: str, value) -> dict:
    config = copy.deepcopy(config)
    place = config
    for part in steps(section):
        place = place[0] if part == "[]" else place[part]
    place[added_key(section)[0]] = value
    return config


def configs_by_use(tmp_path: Path) -> dict[str, dict]:
    """A validated config for each use of a section: the shipped ones, and a source or list the shipped ones lack."""
    (tmp_path / "a.jsonl").write_text('{"text": "从前"}\n', encoding="utf-8")
    base = {"runs": {}}
    hub = validate(load_config(["config/microstories.yaml"], root=REPO))
    url = {"source": "url", "url": {"files": [{"url": "https://example.org/a.jsonl", "sha256": "0" * 64}]}}
    return {name: {key: value for key, value in validate(deep_merge(base, overrides)).items() if key != "runs"}
            for name, overrides in {
                "default": load_config(root=REPO), "hub": hub, "url": {"corpus": url},
                "local": {"corpus": {"source": "local", "local": {"paths": [str(tmp_path / "a.jsonl")]}}},
                "extra set": {"evaluate": {"extra_sets": [{"path": str(tmp_path / "a.jsonl")}]}}}.items()}


def test_every_section_of_the_schema_has_its_stage_named():
    """A new section names the stage its keys belong to here, so the tests below cover it."""
    new = {section for section in schema_sections(schema.load_schema())
           if steps(section) and steps(section)[0] not in added_keys.pinned_sections()}  # a new stage's, counted whole
    assert set(schema_sections(schema.load_schema())) - new == set(SECTIONS)


def test_the_pinned_keys_are_the_schemas_but_the_added_ones():
    """pinned_keys.txt is a snapshot: a key renamed or removed from the schema is gone from it too."""
    assert added_keys.pinned_keys() <= set(added_keys.schema_keys(schema.load_schema()))
    added = set(added_keys.schema_keys(schema.load_schema())) - added_keys.pinned_keys()
    new_tops = {key for key in schema.load_schema()["properties"] if added_keys.new_section(added_keys.TOP, key)}
    new_sections = {key for key in added if key.split(".", 1)[0].split(added_keys.ITEMS, 1)[0] in new_tops}
    assert added - new_sections == {"corpus.max_story_characters", "strategy", "continue_from"}


@pytest.mark.parametrize("section", list(SECTIONS), ids=lambda section: section or "top level")
def test_a_key_added_with_a_default_moves_no_folder(tmp_path, monkeypatch, section):
    configs = configs_by_use(tmp_path)
    before = {name: stages.hashes(config) for name, config in configs.items()}
    add_key_to_schema(monkeypatch, section)
    for files, pinned in PINNED.items():
        the_plan = plan(load_config(files, root=REPO))
        assert {stage: set(by_hash) for stage, by_hash in the_plan.stages.items() if stage in PINNED_STAGES} == \
            {stage: {hash_} for stage, hash_ in pinned.items()}
    assert added_value(validate(configs[SECTIONS[section][1]]), section) == added_key(section)[1]  # it is there
    assert {name: stages.hashes(validate(config)) for name, config in configs.items()} == before


def added_value(config: dict, section: str):
    place = config
    for part in steps(section):
        place = place[0] if part == "[]" else place[part]
    return place.get(added_key(section)[0])


@pytest.mark.parametrize("section", list(SECTIONS), ids=lambda section: section or "top level")
def test_a_key_added_and_set_away_from_its_default_moves_its_stage_and_downstream(tmp_path, monkeypatch, section):
    stage, use = SECTIONS[section]
    add_key_to_schema(monkeypatch, section)
    config = validate(configs_by_use(tmp_path)[use])
    expected = {name for name in stages.downstream(stage) if name in stages.active(config)}
    _, default, away = added_key(section)
    assert changed_stages(config, set_added(config, section, away)) == expected
    assert changed_stages(config, set_added(config, section, default)) == set()


@pytest.mark.parametrize("section, settings, filled", [
    ("evaluate", {"batch_size": 4}, {"batch_size": 4, ADDED: 7}),
    ("train", {"train": {"max_tokens": 10}},
     {"train": {"max_tokens": 10, ADDED: 7}, "strategy": "auto", "continue_from": None}),
    (added_keys.TOP, {"devices": 2}, {"devices": 2, ADDED: 7, "strategy": "auto", "continue_from": None}),
])
def test_a_command_gets_an_added_key_the_record_leaves_out_at_its_default(monkeypatch, section, settings, filled):
    add_key_to_schema(monkeypatch, section)
    path = added_keys.TOP if section == "train" else section
    assert added_keys.with_added_defaults(settings, path) == filled
