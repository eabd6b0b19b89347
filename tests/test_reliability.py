"""What a hostile or unlucky user meets: nothing written outside the project, nothing lost, nothing trained
twice, and every bad input stopped early with one line that names the key or the file (docs/reliability.md).

The fast tests drive the stage commands and helpers directly; the slow ones run the real snakemake.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import (
    REPO,
    copy_workflow,
    dry_run_jobs,
    load_json,
    owned_env,
    snakemake,
    stage_hashes,
    tiny_config,
    training_pid,
    wait_for,
    write_config,
)
from storylm.io.entry import StageError
from storylm.io.stagelock import is_locked, note, stage_lock
from storylm.plan import stages
from storylm.plan.runs import RunError, plan, resolve
from storylm.plan.stage import finish_stage

ENV = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}


def storylm_command(module: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"storylm.{module}", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------------------
# Clean never deletes what it must not


def fake_project(root: Path, config: dict) -> dict[str, Path]:
    """Every stage folder the config's plan uses, plus an unused one per stage, as empty folders with a file."""
    folders = {}
    for stage, by_hash in plan(config).stages.items():
        for hash_ in by_hash:
            folders[stage] = root / stages.folder(stage, hash_)
            folders[stage].mkdir(parents=True)
            (folders[stage] / "config.json").write_text("{}")
        unused = root / stages.folder(stage, "0123456789")
        unused.mkdir(parents=True, exist_ok=True)
        (unused / "config.json").write_text("{}")
    (root / "config").mkdir(exist_ok=True)
    write_config(root, config)
    return folders


def clean(root: Path, *args: str) -> subprocess.CompletedProcess:
    """python -m storylm.clean in `root`, in this process (the command is one main())."""
    import contextlib
    import io

    from storylm.clean import main

    out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(cwd)
    return subprocess.CompletedProcess(["storylm.clean", *args], code, out.getvalue(), err.getvalue())


def test_clean_refuses_to_delete_while_snakemake_holds_locks(tmp_path):
    fake_project(tmp_path, tiny_config())
    locks = tmp_path / ".snakemake/locks"
    locks.mkdir(parents=True)
    (locks / "0.output.lock").write_text(f"{tmp_path}/results/sample/abc/samples.txt\n")
    result = clean(tmp_path, "--delete")
    assert result.returncode == 1
    assert result.stderr.startswith("error: .snakemake/locks holds 1 locks (0.output.lock, e.g. ")
    assert "snakemake --unlock" in result.stderr and len(result.stderr.splitlines()) == 1
    assert (tmp_path / stages.folder("pretrain", "0123456789")).is_dir()  # nothing removed
    assert clean(tmp_path).returncode == 0  # listing is harmless


def test_clean_touches_only_stage_hashes_and_skips_links(tmp_path):
    folders = fake_project(tmp_path, tiny_config())
    mine = tmp_path / "Data/raw/my_stories"  # ten characters, not a hash
    mine.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (tmp_path / "results/pretrain/abcdef0123").symlink_to(elsewhere, target_is_directory=True)
    result = clean(tmp_path, "--delete")
    assert result.returncode == 0, result.stderr
    assert "results/pretrain/abcdef0123: a symbolic link, skipped" in result.stderr
    assert mine.is_dir() and (elsewhere / "keep.txt").is_file()
    assert not (tmp_path / stages.folder("pretrain", "0123456789")).exists()
    assert all(folder.is_dir() for folder in folders.values())


def test_clean_leaves_a_folder_a_stage_command_is_working_in(tmp_path):
    fake_project(tmp_path, tiny_config())
    busy = tmp_path / stages.folder("pretrain", "0123456789")
    with stage_lock(busy, "storylm.pretrain run"):
        result = clean(tmp_path, "--delete")
    assert result.returncode == 0, result.stderr
    assert f"in use by process {os.getpid()} (storylm.pretrain run); not removed" in result.stderr
    assert busy.is_dir()
    assert not (tmp_path / stages.folder("shards", "0123456789")).exists()


def test_clean_warns_when_local_files_are_missing_or_changed(tmp_path):
    stories = tmp_path / "stories.jsonl"
    stories.write_text('{"text": "从前"}\n', encoding="utf-8")
    config = tiny_config()
    config["corpus"].update(source="local", local={"paths": [str(stories)]})
    fake_project(tmp_path, config)
    assert "warning" not in clean(tmp_path).stderr
    stories.write_text('{"text": "从前，有一只小猫"}\n', encoding="utf-8")
    assert "corpus.local.paths: no corpus folder was built from these files as they are now" in clean(tmp_path).stderr
    stories.unlink()
    assert f"corpus.local.paths: {stories} do not exist" in clean(tmp_path).stderr


# ---------------------------------------------------------------------------
# One training per folder, and only from its own checkpoints


def rendered_pretrain(root: Path) -> Path:
    """A stage folder with a pretrain.yaml whose shards exist (their indexes are what the fingerprint reads)."""
    shards = root / "Data/shards/0123456789"
    for split in ("train", "val"):
        (shards / split).mkdir(parents=True)
        (shards / split / "index.json").write_text(json.dumps({"chunks": [], "split": split}))
    out = root / "results/pretrain/abcdef0123"
    out.mkdir(parents=True)
    (out / "pretrain.yaml").write_text(yaml.safe_dump({"out_dir": str(out), "data": {"init_args": {
        "data_path": str(shards)}}}))
    return out


def test_a_second_training_in_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    out = rendered_pretrain(tmp_path)
    with stage_lock(out, "storylm.pretrain run"):
        result = storylm_command("pretrain", "run", "--config", str(out / "pretrain.yaml"))
    assert result.returncode == 1
    assert result.stderr == (f"error: {out}: in use by process {os.getpid()} (storylm.pretrain run); a second"
                             " storylm training there would write the same files. Wait for it to end, or stop"
                             " it first\n")
    assert not is_locked(out)


def test_a_test_finds_its_training_by_the_lock_record_and_its_own_mark_not_by_a_command_line(tmp_path):
    """Another checkout training the same config runs a litgpt with the same command line: a test that took
    it for its own would assert on it and kill it. Only the process the lock names, started by this test, is
    this test's."""
    out = tmp_path / "results/pretrain/0123456789"
    command = [sys.executable, "-c", "import time; time.sleep(120)", "litgpt", "pretrain", "--config",
               f"results/pretrain/{out.name}/pretrain.yaml"]
    ours_env, theirs_env = owned_env(), owned_env()
    ours = subprocess.Popen(command, env=ours_env)
    theirs = subprocess.Popen(command, env=theirs_env)
    try:
        with stage_lock(out, "storylm.pretrain run") as lock:
            assert training_pid(out, ours_env) is None  # the lock names no litgpt yet
            note(lock, f"process {os.getpid()} (storylm.pretrain run) and its litgpt, process {theirs.pid}")
            assert training_pid(out, ours_env) is None and training_pid(out, theirs_env) == theirs.pid
            note(lock, f"process {os.getpid()} (storylm.pretrain run) and its litgpt, process {ours.pid}")
            assert training_pid(out, ours_env) == ours.pid
            ours.kill()
            ours.wait()
            assert training_pid(out, ours_env) is None  # ended: its pid is no one's to kill
    finally:
        for process in (ours, theirs):
            process.kill()
            process.wait()


def make_work(out: Path, *names: str) -> None:
    for name in names:
        (out / name).mkdir()
        (out / name / "lit_model.pth").write_bytes(b"weights")


def test_checkpoints_of_other_shards_are_set_aside_and_the_same_work_is_kept(tmp_path, capsys):
    from storylm.model.training_runner import FINGERPRINT, set_aside_stale_work
    from storylm.pretrain import fingerprint_files

    out = rendered_pretrain(tmp_path)
    files = fingerprint_files(out / "pretrain.yaml", yaml.safe_load((out / "pretrain.yaml").read_text()))
    assert set_aside_stale_work(out, files) is None  # nothing there yet: the fingerprint is recorded
    make_work(out, "step-00000005", "step-00000010")
    (out / "progress.log").write_text("iter 1\n")
    assert set_aside_stale_work(out, files) is None  # the same work: resumed
    assert (out / "step-00000010").is_dir()
    # The same shards written again (a rerun of the shards job): litdata's index has a new updated_at.
    index = load_json(files["shards/train/index.json"])
    files["shards/train/index.json"].write_text(json.dumps({**index, "updated_at": str(time.time() + 5)}))
    assert set_aside_stale_work(out, files) is None and (out / "step-00000010").is_dir()
    # The shards are rebuilt from an edited corpus: their index changes.
    files["shards/train/index.json"].write_text(json.dumps({"chunks": [{"filename": "chunk-0-0.bin"}]}))
    aside = set_aside_stale_work(out, files)
    assert aside is not None and aside.name.startswith("stale-")
    # Renamed: litgpt's resume: auto finds any step-*/*.pth below its out_dir.
    assert sorted(p.name for p in aside.iterdir()) == ["progress.log", "stale-step-00000005", "stale-step-00000010"]
    from litgpt.utils import find_resume_path

    assert find_resume_path("auto", out) is None
    assert not list(out.glob("step-*")) and (out / "pretrain.yaml").is_file()
    assert "shards/train/index.json changed since it was trained" in capsys.readouterr().err
    assert set(load_json(out / FINGERPRINT)) == {"pretrain.yaml", "shards/train/index.json", "shards/val/index.json"}


def test_work_from_before_fingerprints_is_kept_only_when_nothing_changed_after_it(tmp_path):
    from storylm.model.training_runner import FINGERPRINT, set_aside_stale_work
    from storylm.pretrain import fingerprint_files

    out = rendered_pretrain(tmp_path)
    files = fingerprint_files(out / "pretrain.yaml", yaml.safe_load((out / "pretrain.yaml").read_text()))
    past = time.time() - 100
    for path in files.values():
        os.utime(path, (past, past))
    make_work(out, "step-00000005")
    assert set_aside_stale_work(out, files) is None and (out / "step-00000005").is_dir()  # older data: kept
    (out / FINGERPRINT).unlink()
    os.utime(files["shards/val/index.json"])  # rebuilt after the checkpoint
    assert set_aside_stale_work(out, files) is not None and not (out / "step-00000005").exists()


# ---------------------------------------------------------------------------
# Local files: identified by content, read under their own names


def local_config(*paths) -> dict:
    config = tiny_config()
    config["corpus"].update(source="local", local={"paths": [str(p) for p in paths]})
    return config


def test_a_local_file_is_identified_by_its_content(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the sha256 cache lives under the working directory
    folder = tmp_path / "stories"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"text": "从前，有一只小猫。"}\n', encoding="utf-8")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("bookkeeping")
    before = stages.hashes(local_config(folder))
    os.utime(folder / "a.jsonl")  # touch
    (folder / ".cache" / "lock").write_text("other bookkeeping")  # hidden folders are not read
    assert stages.hashes(local_config(folder)) == before
    copied = tmp_path / "moved"
    shutil.copytree(folder, copied, copy_function=shutil.copyfile)  # cp without -p: new times
    shutil.rmtree(folder)
    assert stages.hashes(local_config(copied)) == before
    (copied / "a.jsonl").write_text('{"text": "从前，有一只小狗。"}\n', encoding="utf-8")
    changed = stages.hashes(local_config(copied))
    assert changed["download"] != before["download"] and changed["corpus"] != before["corpus"]
    assert json.loads((tmp_path / ".snakemake/storylm/sha256.json").read_text())  # hashed once, remembered


def test_a_cached_hash_is_used_until_size_or_time_change(tmp_path, monkeypatch):
    from storylm.io import filehash

    monkeypatch.chdir(tmp_path)
    big = tmp_path / "big.jsonl"
    big.write_text("x" * 1000)
    calls = []
    real = filehash.file_sha256
    monkeypatch.setattr(filehash, "file_sha256", lambda path: calls.append(path) or real(path))
    for _ in range(3):
        stages.local_files([str(big)])
    assert len(calls) == 1
    os.utime(big, (time.time() + 5, time.time() + 5))
    stages.local_files([str(big)])
    assert len(calls) == 2


def hf_cache_snapshot(root: Path) -> Path:
    """A Hugging Face cache snapshot: train.jsonl is a link to ../../blobs/<sha>, a name without a suffix."""
    blob = root / "blobs" / "5e884898da28047151d0e56f8dc6292773603d0d"
    blob.parent.mkdir(parents=True)
    blob.write_text("".join(json.dumps({"text": f"第{i}个故事。小猫在玩。"}, ensure_ascii=False) + "\n"
                            for i in range(50)), encoding="utf-8")
    snapshot = root / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "train.jsonl").symlink_to(Path("../../blobs") / blob.name)
    return snapshot


@pytest.mark.parametrize("point_at", ["folder", "file"])
def test_linked_local_files_are_read_under_their_own_names(tmp_path, point_at):
    from storylm.corpus import build_corpus
    from storylm.download import fetch
    from storylm.io.manifest import manifest_files

    snapshot = hf_cache_snapshot(tmp_path / "hub")
    path = snapshot if point_at == "folder" else snapshot / "train.jsonl"
    corpus = local_config(path)["corpus"]
    corpus.update(include=["*.jsonl"], split={"val_size": 5, "seed": 0})
    files = fetch(corpus, tmp_path / "raw")
    assert [f.name for f in files] == ["train.jsonl"] and files[0].is_symlink()
    assert [f.name for f in manifest_files(tmp_path / "raw")] == ["train.jsonl"]
    stats = build_corpus(corpus, manifest_files(tmp_path / "raw"), tmp_path / "corpus")
    assert stats["stories"] == 50


# ---------------------------------------------------------------------------
# Errors found before any job, each naming its key


def test_a_head_count_that_does_not_divide_the_width_names_the_key():
    config = tiny_config()
    config["model_config"].update(n_head=3, n_embd=32)
    del config["model_config"]["head_size"]
    with pytest.raises(RunError, match=r"^model_config\.n_head: n_embd 32 is not a multiple of n_head 3; set"
                                       r" model_config\.head_size"):
        resolve(config)
    config["model_config"]["head_size"] = 16  # 3 heads of 16 into a width of 32: litgpt builds it
    resolve(config)


def test_a_model_litgpt_refuses_is_refused_with_its_reason():
    config = tiny_config()
    config["model_config"]["rotary_percentage"] = 3.0  # more rotary channels than a head has
    with pytest.raises(RunError, match=r"^model_config: litgpt cannot build this model \("):
        resolve(config)


def test_a_model_built_once_is_not_built_again_and_a_refused_one_always_is(tmp_path):
    """Each snakemake run plans: a model this litgpt and torch built before skips litgpt's import
    (seconds); one litgpt refused is refused again, never remembered."""
    good, bad = tiny_config(), tiny_config()
    bad["model_config"]["rotary_percentage"] = 3.0
    script = ("import json, sys; from storylm.plan.runs import resolve; from storylm.io.entry import StageError\n"
              "try:\n    resolve(json.loads(sys.argv[1])); print('ok', 'litgpt' in sys.modules)\n"
              "except StageError as error:\n    print('refused', 'litgpt' in sys.modules)")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "PYTHONPATH": str(REPO / "workflow")}

    def plan_in_a_new_process(config):
        return subprocess.run([sys.executable, "-c", script, json.dumps(config)], env=env, cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.split()

    assert plan_in_a_new_process(good) == ["ok", "True"]  # built by litgpt
    assert plan_in_a_new_process(good) == ["ok", "False"]  # remembered
    assert len((tmp_path / "storylm" / "passed-checks").read_text().split()) == 2  # the model, the optimizer
    assert plan_in_a_new_process(bad) == ["refused", "True"]
    assert plan_in_a_new_process(bad) == ["refused", "True"]  # not remembered: built and refused again


def test_a_prompt_longer_than_the_block_is_refused_when_the_tokenizer_is_at_hand(tmp_path):
    from tiny_checkpoint import make_checkpoint

    tokenizer = make_checkpoint(tmp_path / "tok")
    config = tiny_config()
    config["tokenizer"].update(kind="pretrained", source="local", path=str(tokenizer))
    config["model_config"]["vocab_size"] = 300
    resolve(config)
    config["sample"]["prompts"] = ["在森林里", "从前，" + "小猫和小狗一起玩。" * 20]
    with pytest.raises(RunError, match=r"^sample\.prompts\[1\]: \d+ tokens, but model_config\.block_size is 64: a"
                                       r" prompt must leave room for the story \(at most 63 tokens\)$"):
        resolve(config)


@pytest.mark.parametrize("name, message", [
    ("..", "runs...: a run name of dots only"),
    (".", "runs..: a run name of dots only"),
    ("-h", "runs.-h: a run name may not start with '-'"),
    (512, "runs.512: quote the name (YAML reads 512 as a int)"),
])
def test_run_names_that_would_break_folders_or_commands_are_refused(name, message):
    config = tiny_config()
    config["runs"] = {"base": {}, name: {}}
    with pytest.raises(RunError) as error:
        resolve(config)
    assert str(error.value).startswith(message)


def test_a_truncated_checkpoint_names_the_file_and_what_to_rerun(tmp_path):
    from storylm.model.checkpoint import load_model
    from tiny_checkpoint import make_checkpoint

    checkpoint = make_checkpoint(tmp_path / "final")
    weights = checkpoint / "lit_model.pth"
    weights.write_bytes(weights.read_bytes()[:2000])
    with pytest.raises(StageError, match=rf"^{weights}: cannot be read as a torch checkpoint, truncated or damaged"
                                         r" \(.*\); rerun pretrain \(snakemake --forcerun pretrain \.\.\.\)$"):
        load_model(checkpoint)


# ---------------------------------------------------------------------------
# Minor: invisible stories, damaged shards, very long stories


def test_a_story_of_invisible_characters_is_empty():
    from storylm.stories.storytext import clean

    assert clean("\u200b\u200c\u200d\ufeff \u2060", "NFC") == ""
    assert clean("\u200b小猫\u200b", "NFC") == "\u200b小猫\u200b"  # a real story keeps its characters


def test_a_cut_off_shard_chunk_is_named(tmp_path):
    from storylm.evaluate import check_chunks

    split = tmp_path / "val"
    split.mkdir()
    (split / "chunk-0-0.bin").write_bytes(b"\0" * 100)
    (split / "index.json").write_text(json.dumps({"chunks": [{"filename": "chunk-0-0.bin", "chunk_bytes": 100}]}))
    check_chunks(split)
    (split / "chunk-0-0.bin").write_bytes(b"\0" * 60)
    with pytest.raises(StageError, match=r"chunk-0-0\.bin: 60 bytes, but .*index\.json lists 100 bytes: a damaged"
                                         r" shard chunk; rebuild the shards"):
        check_chunks(split)


def test_a_story_too_long_to_tokenize_names_its_file_and_line(tmp_path):
    from storylm.io.readers import ReadError, raw_texts

    path = tmp_path / "novel.jsonl"
    path.write_text('{"text": "短"}\n' + json.dumps({"text": "长" * 5000}) + "\n", encoding="utf-8")
    with pytest.raises(ReadError, match=r"novel\.jsonl: line 2: a story of 5,000 characters, more than"
                                        r" corpus\.max_story_characters \(4,000\)"):
        list(raw_texts(path, "text", max_characters=4000))
    assert len(list(raw_texts(path, "text", max_characters=5000))) == 2


# ---------------------------------------------------------------------------
# The real snakemake: kills, edits and housekeeping beside a running pipeline

LONG_STEPS = 300  # long enough (~30 s) to act on a running training


def long_config(seed: int) -> dict:
    config = tiny_config()
    config["seed"] = seed  # a pretrain folder of its own; corpus, tokenizer and shards are shared
    config["train"].update(max_tokens=LONG_STEPS * 4 * 64, save_interval=10, log_interval=1)
    config["eval"].update(interval=1000, final_validation=False)
    return config


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("reliability") / "wf")
    write_config(workdir, tiny_config())
    snakemake(workdir, "--cores", "2", "--until", "pretrain_config")
    return workdir


def background_snakemake(workdir: Path, *args: str) -> subprocess.Popen:
    """snakemake in the background; its owned_env marks the processes it starts as this test's."""
    env = owned_env()
    pipeline = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=workdir, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    pipeline.owned_env = env
    return pipeline


@pytest.mark.slow
def test_after_kill_9_of_snakemake_a_rerun_does_not_train_a_second_time(shared):
    config = long_config(seed=11)
    config["train"]["max_tokens"] = 100_000 * 4 * 64  # far longer than the test: it is stopped below
    write_config(shared, config)
    out = shared / "results/pretrain" / stage_hashes(config)["pretrain"]
    pipeline = background_snakemake(shared, "--until", "pretrain")
    try:
        # The training this test started: the stage lock's record, with this test's mark in its environment.
        def litgpt_pid():
            return training_pid(out, pipeline.owned_env)

        wait_for(lambda: (out / "step-00000010").is_dir() and litgpt_pid(), 300, "the training")
        pipeline.kill()  # SIGKILL to snakemake alone: its job's processes live on
        pipeline.wait()
        orphan = litgpt_pid()
        assert orphan and is_locked(out)
        snakemake(shared, "--unlock")
        rerun = snakemake(shared, "--cores", "2", "--until", "pretrain", check=False)
        assert rerun.returncode != 0
        log = (shared / "logs/pretrain" / f"{out.name}.log").read_text()
        assert log.startswith(f"error: results/pretrain/{out.name}: in use by process ")
        assert f"its litgpt, process {orphan}" in log and len(log.splitlines()) == 1
        assert litgpt_pid() == orphan  # the first training runs on, alone
    finally:
        if pid := litgpt_pid():
            os.kill(pid, 9)
    # One training wrote the live log: litgpt started once.
    assert (out / "progress.log").read_text().count("Seed set to") == 1
    wait_for(lambda: not is_locked(out), 60, "the lock to be released")


@pytest.mark.slow
def test_clean_beside_a_running_pipeline_of_another_config_removes_nothing(shared):
    config = long_config(seed=12)
    write_config(shared, config)
    out = shared / "results/pretrain" / stage_hashes(config)["pretrain"]
    pipeline = background_snakemake(shared, "--until", "pretrain")
    try:
        wait_for(lambda: (out / "step-00000010").is_dir(), 300, "the training")
        other = shared / "config/other.yaml"
        other.write_text(yaml.safe_dump({"corpus": {"builtin": {"num_stories": 300}}}))
        result = clean(shared, "--configfile", "config/other.yaml", "--delete")
        assert result.returncode == 1 and "a snakemake is running here" in result.stderr
        output, _ = pipeline.communicate(timeout=600)
    finally:
        pipeline.kill()
    assert pipeline.returncode == 0, output
    assert (out / "final/lit_model.pth").is_file()


@pytest.mark.slow
def test_an_edited_corpus_trains_afresh_and_a_forced_rerun_of_the_same_work_resumes(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    config = tiny_config()
    write_config(workdir, config)
    snakemake(workdir, "--cores", "2", "--until", "pretrain")
    hashes = stage_hashes(config)
    out = workdir / "results/pretrain" / hashes["pretrain"]
    first = (out / "train.log").read_text()
    train = workdir / "Data/corpus" / hashes["corpus"] / "train.jsonl"
    lines = train.read_text(encoding="utf-8").splitlines()
    lines[0] = json.dumps({"text": "从前，有一只会唱歌的小猫。它每天都唱歌。"}, ensure_ascii=False)
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # Other data in the same folder, as a new version of the corpus code would write it: its record lists the
    # new file (an edit alone is damage, and the rebuild would bring back the same stories, which resume).
    record = {key: value for key, value in load_json(train.parent / "config.json").items() if key not in ("files", "read")}
    finish_stage(train.parent, record)

    snakemake(workdir, "--cores", "2", "--until", "pretrain")  # the shards are rebuilt, then pretrain reruns
    stale = list(out.glob("stale-*"))
    # Snakemake deletes the declared train.log before the job; the live log keeps the old training's lines.
    assert len(stale) == 1 and (stale[0] / "stale-step-00000012").is_dir()
    assert (stale[0] / "progress.log").read_text() == first
    log = (workdir / "logs/pretrain" / f"{out.name}.log").read_text()
    assert "held the work of another training (shards/train/index.json" in log
    assert "no step-* checkpoint: starting from scratch" in log
    assert "Resuming" not in (out / "train.log").read_text()

    snakemake(workdir, "--cores", "2", "--until", "pretrain", "--forcerun", "pretrain")  # nothing changed
    log = (workdir / "logs/pretrain" / f"{out.name}.log").read_text()
    assert "resuming from" in log and "another training" not in log
    assert len(list(out.glob("stale-*"))) == 1
    # The same shards rebuilt (their index.json has a new updated_at, as after an upgrade's rerun): resumed too.
    index = workdir / "Data/shards" / hashes["shards"] / "train/index.json"
    written = load_json(index)["updated_at"]
    snakemake(workdir, "--cores", "2", "--until", "pretrain", "--forcerun", "shards")
    log = (workdir / "logs/pretrain" / f"{out.name}.log").read_text()
    assert load_json(index)["updated_at"] != written
    assert "resuming from" in log and "another training" not in log
    assert len(list(out.glob("stale-*"))) == 1


@pytest.mark.slow
def test_a_touched_local_corpus_has_nothing_to_do(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    snapshot = hf_cache_snapshot(tmp_path / "hub")  # and read through links, as from a Hugging Face cache
    config = local_config(snapshot)
    config["corpus"].update(include=["*.jsonl"], split={"val_size": 5, "seed": 0})
    write_config(workdir, config)
    snakemake(workdir, "--cores", "2", "--until", "corpus")
    assert dry_run_jobs(workdir, "--until", "corpus") == {}
    blob = next((tmp_path / "hub/blobs").iterdir())
    os.utime(blob, (time.time() + 60, time.time() + 60))  # touch
    assert dry_run_jobs(workdir, "--until", "corpus") == {}
    blob.write_text(blob.read_text(encoding="utf-8") + json.dumps({"text": "新的故事。"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    assert dry_run_jobs(workdir, "--until", "corpus") == {"download": 1, "corpus": 1}


@pytest.mark.slow
def test_a_too_long_prompt_stops_before_training(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    config = tiny_config()
    config["sample"]["prompts"] = ["从前，" + "小猫和小狗一起玩。" * 30]
    write_config(workdir, config)
    result = snakemake(workdir, "--cores", "2", check=False)
    assert result.returncode != 0
    out = workdir / "results/pretrain" / stage_hashes(config)["pretrain"]
    assert not (out / "progress.log").exists() and not list(out.glob("step-*"))
    log = next((workdir / "logs/sample_prompts").iterdir()).read_text().splitlines()
    assert log[0].startswith("record: ")  # the stage protocol's first line: the settings it ran with
    assert log[-1].startswith("error: sample.prompts[0]: ") and "model_config.block_size is 64" in log[-1]
    # With the tokenizer built, the plan itself refuses it, before any job.
    dry = snakemake(workdir, "--dry-run", check=False)
    assert dry.returncode != 0 and "sample.prompts[0]: " in dry.stderr + dry.stdout
