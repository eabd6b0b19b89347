"""Shared test helpers: a copy of the workflow in a temporary directory, and a tiny config for it."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Real files the repository cannot carry (the ChatGLM3 tokenizer, real stories), by default in the
# developers' ../shared/fixtures. This is their one setting; tests that need them skip without them
# (the reasons below say how to get them), so a fresh clone with nothing beside it passes.
FIXTURES = Path(os.environ.get("STORYLM_FIXTURES") or REPO.parent / "shared" / "fixtures").resolve()
CHATGLM3_DIR = FIXTURES / "chatglm3-6b"
STORIES_DIR = FIXTURES / "stories_zh"
TINYSTORIES_ROW = STORIES_DIR / "tinystories_zh_row0.jsonl"
PICTUREBOOKS = STORIES_DIR / "picturebooks_ccby.jsonl"

HAVE_CHATGLM3 = all((CHATGLM3_DIR / name).is_file() for name in ("tokenizer.model", "tokenizer_config.json"))
NO_CHATGLM3 = (f"needs the ChatGLM3-6B tokenizer: set STORYLM_FIXTURES (now {FIXTURES}) to a folder with"
               " chatglm3-6b/tokenizer.model and tokenizer_config.json (`hf download THUDM/chatglm3-6b"
               " tokenizer.model tokenizer_config.json --local-dir <STORYLM_FIXTURES>/chatglm3-6b`)")
HAVE_REAL_STORIES = TINYSTORIES_ROW.is_file() and PICTUREBOOKS.is_file()
NO_REAL_STORIES = (f"needs the real stories: set STORYLM_FIXTURES (now {FIXTURES}) to a folder with"
                   " stories_zh/tinystories_zh_row0.jsonl (row 0 of data00_zh.jsonl in the adam89/TinyStoriesChinese"
                   " archive) and stories_zh/picturebooks_ccby.jsonl (54 African Storybook picture books in Chinese,"
                   " CC-BY, from the Global-ASP project: one JSON object a line with story_zh)")
needs_chatglm3 = pytest.mark.skipif(not HAVE_CHATGLM3, reason=NO_CHATGLM3)
needs_real_stories = pytest.mark.skipif(not HAVE_REAL_STORIES, reason=NO_REAL_STORIES)

WORKFLOW_FILES = ("Snakefile", "workflow", "config", "envs", "profiles")
SNAKEMAKE_OUTPUT = "snakemake-output.txt"  # beside tiny_local_run's workdir: what its snakemake printed


def tiny_config() -> dict:
    """config/test.yaml over config/config.yaml, resolved: the whole pipeline in about a minute on 2 cores."""
    from storylm.plan.runs import load_config
    from storylm.plan.schema import validate

    config = validate(load_config(["config/test.yaml"], root=REPO))
    del config["runs"]
    return config


def copy_workflow(dest: Path) -> Path:
    """A fresh working copy of the workflow (no Data/, results/, .snakemake/)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def write_config(workdir: Path, config: dict, name: str = "config/config.yaml") -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the real snakemake command line in workdir, with the test interpreter's environment."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    result = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def dry_run_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """{rule: job count} that a dry run would execute (empty when there is nothing to do)."""
    # The targets and flags first: --quiet takes every word after it as one of its choices.
    result = snakemake(workdir, "--dry-run", *args, "--quiet", "rules")
    jobs = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            jobs[parts[0]] = int(parts[1])
    return jobs


def with_defaults(config: dict) -> dict:
    """The config as the workflow sees it: validated, with the schema's defaults filled in."""
    from storylm.plan.schema import validate

    return validate(copy.deepcopy(config))


def stage_hashes(config: dict) -> dict[str, str]:
    from storylm.plan.stages import hashes

    return hashes(with_defaults(config))


def changed(config: dict, dotted: str, value) -> dict:
    """A copy of config with the value at a dotted key replaced."""
    config = copy.deepcopy(config)
    *parents, key = dotted.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[key] = value
    return config


def wait_for(condition, timeout: float, what: str):
    """condition()'s first true value, polled every 0.2 s; AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


OWNER = "STORYLM_TEST_OWNER"  # the mark a test puts in the environment of the processes it starts


def owned_env() -> dict:
    """The test interpreter's environment, with a mark unique to this call: every process started with it,
    and every process those start, carries it, so a test tells its own processes from another checkout's."""
    return {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
            OWNER: uuid.uuid4().hex}


def carries(pid: int, env: dict) -> bool:
    """True while process pid runs with env's mark (False once it has ended, or for a reused pid)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{OWNER}={env[OWNER]}".encode() in environ


def training_pid(run: Path, env: dict) -> int | None:
    """The litgpt process training in run, as the stage lock records it, if this test started it (with env)."""
    from storylm.io.stagelock import holders

    found = re.search(r"its litgpt, process (\d+)", holders(run))
    return int(found[1]) if found and carries(int(found[1]), env) else None


def logged_steps(out: Path) -> list[int]:
    """The step of every training line of a run folder's progress.log so far, repeats kept ([] before it exists)."""
    from storylm.results import litgpt_log

    live = out / "progress.log"
    text = live.read_text(encoding="utf-8") if live.is_file() else ""
    return [int(m["step"]) for line in text.splitlines() if (m := litgpt_log.TRAIN_LINE.match(line))]


def load_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def tiny_local_run(tmp_path_factory) -> tuple[Path, dict]:
    """One local run of the whole pipeline on tiny_config(), shared by the tests that read it.

    Tests that change its config put the original back before they end.
    """
    workdir = copy_workflow(tmp_path_factory.mktemp("pipeline") / "wf")
    # The smoke config's documented command, default target: every stage, the export included.
    result = snakemake(workdir, "--cores", "2", "--configfile", "config/test.yaml")
    (workdir.parent / SNAKEMAKE_OUTPUT).write_text(result.stdout + result.stderr, encoding="utf-8")
    # Then the same config, resolved, as the workdir's config.yaml: the tests change it from there.
    config = tiny_config()
    write_config(workdir, config)
    return workdir, config


@pytest.fixture
def workdir(tmp_path) -> Path:
    return copy_workflow(tmp_path / "wf")


def xdist_group(nodeid: str) -> str:
    """The worker group of a test: its module, except that every test_slurm* module is one group."""
    module = nodeid.split("::", 1)[0]
    return "slurm" if Path(module).name.startswith("test_slurm") else module


def pytest_xdist_make_scheduler(config, log):
    """`pytest -n 2` hands out whole groups (xdist_group above), in collection order.

    A module's tests stay on one worker, so its module fixtures (a whole pipeline run) run once;
    the Slurm tests stay together, so only one of them uses the cluster at a time. (xdist's own
    --dist loadgroup cannot do this with pytest 9, whose node ids it can no longer rename.)
    """
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """The Slurm group first: it mostly waits for the cluster, and the other worker meanwhile runs
    the rest, slow modules first, so that no long module starts last."""
    slow_groups = {xdist_group(item.nodeid) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: (xdist_group(item.nodeid) != "slurm", xdist_group(item.nodeid) not in slow_groups))
