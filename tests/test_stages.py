"""The stage table (storylm/plan/stages.py): pinned hashes, what each setting invalidates, and the table against
what its fingerprints really read. No stage runs here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO, changed, copy_workflow, snakemake
from storylm import config_docs
from storylm.plan import stages
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


@pytest.mark.parametrize("files", list(PINNED), ids=lambda files: files[0] if files else "default")
def test_the_shipped_configs_keep_their_stage_folders(files):
    the_plan = plan(load_config(files, root=REPO))
    assert {stage: set(by_hash) for stage, by_hash in the_plan.stages.items()} == \
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
    planned = set(re.findall(r"(?:Data|results)/[a-z_]+/[0-9a-f]{10}\b", dry_run))
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
    assert changed_stages(config, changed(config, key, value)) == expected
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
    assert config_docs.reruns("corpus.hf.revision") == (
        "download → corpus → tokenizer → shards → pretrain → evaluate, sample → export (when corpus.source is hf)")
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


def test_no_rule_file_spells_a_stage_folder():
    """Outputs are stage_file(stage, name), inputs role(stage, role): a folder moves in the table alone."""
    parents = {spec.parent for spec in stages.STAGES}
    for path in RULES:
        text = path.read_text(encoding="utf-8")
        for parent in parents:
            assert f"{parent}/" not in text, f"{path.name} spells {parent}/"


def test_every_role_a_rule_reads_comes_from_a_stage_it_reads():
    """Each role(stage, role) of the rules resolves to a stage in the consumer's inputs or reads_through
    (so every edge a rule really reads is in the table), and each role names a file its provider writes."""
    calls = [(path.name, stage, role) for path in RULES
             for stage, role in re.findall(r'\brole\("(\w+)", "([\w ]+)"\)', path.read_text(encoding="utf-8"))]
    rules = "".join(p.read_text(encoding="utf-8") for p in RULES)
    for name, stage, role in calls:
        provider = stages.provider(stage, role)
        spec = stages.BY_NAME[stage]
        assert provider in spec.inputs + spec.reads_through, (name, stage, role)
        assert f'stage_file("{provider}", "{stages.BY_NAME[provider].provides[role]}")' in rules, (name, role)
    # Every stage that others read is read by role (a run's files included: common.smk's RUN_INPUTS).
    asked = {role for _, _, role in calls} | set(re.findall(r'^    "\w+": "([\w ]+)",$', rules, flags=re.M))
    assert asked | {"raw files", "hub tokenizer", "export"} == {r for spec in stages.STAGES for r in spec.provides}
    assert {(stage, stages.provider(stage, role)) for _, stage, role in calls} >= {("sample", "tokenizer"),
                                                                                  ("export", "corpus")}


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
    assert stages.provider("tokenizer", "train split") == "dedup"
    assert stages.provider("tokenizer", "hub tokenizer") == "tokenizer_download"
    with pytest.raises(KeyError, match="tokenizer reads 'corpus stats' from corpus: add corpus to its inputs"):
        stages.provider("tokenizer", "corpus stats")


def test_each_stage_has_its_rule_file_included_in_the_order_of_the_table():
    """The Snakefile includes the table's rule files in its order (common.smk STAGE_RULE_FILES); each holds a
    rule named after its stage, and none numbers the stages (the table is the one place of their order)."""
    snakefile = (REPO / "Snakefile").read_text(encoding="utf-8")
    assert "for rule_file in STAGE_RULE_FILES:" in snakefile
    assert re.findall(r'^include: "(.+)"', snakefile, flags=re.M) == ["workflow/rules/common.smk",
                                                                      "workflow/rules/report.smk"]
    for spec in stages.STAGES:
        assert spec.name in rule_names(REPO / spec.rule_file), spec.name
    for path in RULES:
        assert not re.search(r"\bStage \d", path.read_text(encoding="utf-8")), path.name
    assert {REPO / spec.rule_file for spec in stages.STAGES} | {REPO / "workflow/rules/common.smk",
                                                               REPO / "workflow/rules/report.smk"} == set(RULES)


def test_the_samples_header_and_the_seeds_chain_come_from_the_table():
    assert [n for n in stages.ancestors("sample") if stages.always_needed(n)] == [
        "corpus", "tokenizer", "shards", "pretrain"]  # the samples.txt header's stages (common.smk LINEAGE)
    assert config_docs.META_KEYS["seeds"].startswith("pretrain → evaluate, sample → export of the added seeds")
