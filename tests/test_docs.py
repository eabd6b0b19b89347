"""The promises the repository makes about itself: documented keys, mirrored pins, the README's commands."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, copy_workflow


def schema_keys(properties: dict, prefix: str = ""):
    for key, spec in properties.items():
        yield prefix + key, spec
        if spec.get("type") == "object" and "properties" in spec:
            yield from schema_keys(spec["properties"], f"{prefix}{key}.")


def test_every_config_key_has_a_description_and_is_documented():
    schema = yaml.safe_load((REPO / "config/schema.yaml").read_text())
    assert schema["$schema"].endswith("draft/2020-12/schema")
    readme = (REPO / "config/README.md").read_text()
    for key, spec in schema_keys(schema["properties"]):
        assert spec.get("description"), f"{key} has no description"
        assert f"`{key}`" in readme, f"{key} is missing from config/README.md"


TOOLS = ("snakemake", "snakemake-executor-plugin-slurm", "psutil", "pytest", "pytest-xdist", "snakefmt", "ruff", "vulture")


def test_conda_env_mirrors_the_pip_pins():
    pins = [line.strip() for line in (REPO / "envs/requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    env = yaml.safe_load((REPO / "envs/storylm.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    # The jobs' env: every pin but the workflow, test and lint tools, which it must not carry.
    assert pip_section == [pin for pin in pins if pin.split("==")[0] not in TOOLS]
    assert {pin.split("==")[0] for pin in pins} - {pin.split("==")[0] for pin in pip_section} == set(TOOLS)
    assert all("==" in pin for pin in pins)
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins


def test_ci_runs_the_readme_test_command():
    lines = (REPO / "README.md").read_text().splitlines()
    fence = lines.index("```bash")
    install_and_run, test_command = lines[fence + 1], lines[fence + 2]
    assert "pip install -r envs/requirements.txt" in install_and_run
    assert install_and_run.endswith("snakemake --cores all results/samples.txt")
    assert test_command in (REPO / ".ci/run").read_text().splitlines()


def test_the_config_readme_table_and_folders_are_the_schemas_and_the_stage_tables():
    from storylm import config_docs
    from storylm.plan import stages

    readme = (REPO / "config/README.md").read_text(encoding="utf-8")
    assert readme == config_docs.readme_with_table(readme), "run: python -m storylm.config_docs"
    # Each default appears in its row, as the schema has it.
    assert "| `sample.temperature` | `0.4` |" in readme and "| `shards.chunk_bytes` | `\"16MB\"` |" in readme
    # Each stage's folder, the export's included.
    for spec in stages.STAGES:
        assert f"`{spec.parent}/<hash>`" in readme, spec.name


def test_the_embedded_default_is_the_schemas_defaults():
    """One source of defaults: config/config.yaml sets nothing the schema does not already default to."""
    from storylm.plan.runs import differences
    from storylm.plan.schema import defaults, validate

    default_file = yaml.safe_load((REPO / "config/config.yaml").read_text())
    assert differences(defaults(), validate(default_file)) == {}


def module_map() -> dict[str, list[str]]:
    """The module map of workflow/storylm/__init__.py: {section: [module, ...]}."""
    import storylm

    sections, current = {}, None
    for line in storylm.__doc__.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = line.rstrip(":").split(",")[0]
            sections[current] = []
        elif current and line.startswith("    ") and line.split():
            sections[current].append(line.split()[0])
    return sections


def test_the_module_map_lists_every_module_once():
    """Each module of the package, commands and helpers in their subpackages, once in the map; a stage command
    added since the map was written may go unlisted: its row in the stage table and its docstring say what it is."""
    from storylm.plan import stages

    package = REPO / "workflow/storylm"
    modules = sorted(".".join(p.relative_to(package).with_suffix("").parts) for p in package.rglob("*.py")
                     if p.stem != "__init__")
    listed = [f"{section.removeprefix('storylm.')}.{name}" if section.startswith("storylm.") else name
              for section, names in module_map().items() for name in names]
    assert len(listed) == len(set(listed)) and set(listed) <= set(modules)
    assert set(modules) - set(listed) <= set(stages.ORDER)


def test_no_code_is_dead():
    """vulture finds names nothing reads (a constant left behind by a refactor, a field no one asks for);
    tests/vulture_allowlist.py lists the ones a library reads, each with why."""
    result = subprocess.run([sys.executable, "-m", "vulture", "workflow/storylm", "workflow/benchmarks",
                             "tests/vulture_allowlist.py", "--min-confidence", "60"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0 and not result.stdout, result.stdout + result.stderr


def run_stages() -> set[str]:
    """The stages a run builds (snakemake's default target): those that provide a training's results
    (common.smk's RUN_INPUTS and its export) and every stage they descend from. A stage only asked for by its
    path (a leaf no run reads) is not among them."""
    from storylm.plan import stages

    common = (REPO / "workflow/rules/common.smk").read_text(encoding="utf-8")
    roles = set(re.findall(r'^    "\w+": "([\w ]+)",$', common, flags=re.M))
    roles |= set(re.findall(r'run_file\(run, seed, "([\w ]+)"\)', common))
    found = {stages.last_provider(role) for role in roles}
    return found | {name for stage in found for name in stages.ancestors(stage)}


def test_the_readme_draws_and_lists_the_stages_of_the_table():
    """The diagram names the stages a run builds in the table's order (one download box for both downloads),
    and the folder sentence names each one's folder of hash folders."""
    from storylm.plan import stages

    built = run_stages()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    diagram = next(block for block in readme.split("```") if "─►" in block)
    # Read by column (a stage right of another runs after it), then by row (side by side).
    boxes = [(found.start(), row, found[0]) for row, line in enumerate(diagram.split("every run's results")[0]
                                                                       .splitlines())
             for found in re.finditer(r"[a-z]+", line)]
    drawn = [name for _, _, name in sorted(boxes)]
    assert drawn == [name for name in stages.ORDER if name != "tokenizer_download" and name in built]
    groups: dict[str, list[str]] = {}
    for spec in (spec for spec in stages.STAGES if spec.name in built):
        top, _, name = spec.parent.partition("/")
        groups.setdefault(top, [])
        if name not in groups[top]:
            groups[top].append(name)
    sentence = ", ".join(f"`{top}/{{{','.join(names)}}}/<hash>/`" for top, names in groups.items())
    assert sentence in " ".join(readme.split()), sentence


def imported_modules(path) -> set[str]:
    """The storylm modules a file imports, as dotted names below storylm ("corpus", "io.entry")."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "storylm":
            below = node.module.removeprefix("storylm").lstrip(".")
            found |= {f"{below}.{alias.name}".lstrip(".") for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name.removeprefix("storylm.") for alias in node.names if alias.name.startswith("storylm.")}
    return found


def test_the_layers_import_only_downward():
    """A stage command imports helpers, never another command; a helper imports only from its own
    subpackage and those the module map lists above it, never a command."""
    sections = module_map()
    commands = set(sections["Stage commands"]) | set(sections["Tools a person runs"])
    layers = [section.removeprefix("storylm.") for section in sections if section.startswith("storylm.")]
    package = REPO / "workflow/storylm"
    for name in commands:
        imported = imported_modules(package / f"{name}.py")
        assert not (imported & commands), (name, imported & commands)
    for rank, layer in enumerate(layers):
        allowed = set(layers[:rank + 1])
        for path in sorted((package / layer).glob("*.py")):
            for module in imported_modules(path):
                top = module.split(".")[0]
                assert top in allowed, f"storylm.{layer}.{path.stem} imports storylm.{module}, a layer above it"


def test_every_public_exception_derives_from_the_one_root():
    import importlib
    import inspect

    from storylm.io.entry import StageError

    for path in (REPO / "workflow/storylm").glob("*.py"):
        module = importlib.import_module(f"storylm.{path.stem}" if path.stem != "__init__" else "storylm")
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__ \
                    and not name.startswith("_"):
                assert issubclass(obj, StageError), f"{module.__name__}.{name}"


def readme_commands() -> list[str]:
    """Every command of the README: the lines of its bash blocks and its inline `snakemake ...` and
    `python -m storylm...` commands, with comments and placeholders (<hash>) as written."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        commands += [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    commands += re.findall(r"`((?:snakemake|python -m storylm\.\w+)(?: [^`]*)?)`", text)
    # One command per `&&` step, on one line.
    steps = [" ".join(step.split()) for command in commands for step in command.split("&&")]
    return list(dict.fromkeys(steps))


# Commands a test elsewhere runs for real, or that need what a test machine has not: each says which.
RUN_ELSEWHERE = {
    "pip install": "the install runs in CI's own step (.ci/run) and on every user's machine",
    "venv": "part of the install",
    "pytest": "the test command: CI runs it (tests/test_docs.py::test_ci_runs_the_readme_test_command)",
    "--report": "tests/test_runs.py renders a real report in Chromium",
    "--profile slurm": "tests/test_slurm*.py run the Slurm profile on a real cluster",
    "storylm.compare": "it needs trained runs: tests/test_seeds.py runs it on the tiny config's",
    "conda": "needs conda, which the pip install does not bring",
}


def why_not_here(command: str) -> str | None:
    for marker, why in RUN_ELSEWHERE.items():
        if marker in command:
            return why
    return None


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path):
    """Each snakemake command of the README as a dry run in a fresh copy of the workflow, and each
    storylm command for real: an option renamed, a config file moved or a module gone fails here."""
    workdir = copy_workflow(tmp_path / "wf")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "PYTHONPATH": str(workdir / "workflow")}
    ran = []
    for command in readme_commands():
        if why_not_here(command):
            continue
        words = shlex.split(command)
        if words[0] == "snakemake":
            words = [sys.executable, "-m", "snakemake", *words[1:]]
            if "--unlock" not in words:
                words.append("--dry-run")
        elif words[:2] == ["python", "-m"]:
            words[0] = sys.executable
        else:
            raise AssertionError(f"{command}: neither runs here nor says in RUN_ELSEWHERE which test runs it")
        result = subprocess.run(words, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-2000:])
        ran.append(command)
    assert "snakemake --cores all results/samples.txt" in ran and any("microstories.yaml" in c for c in ran), ran
    assert any(command.startswith("python -m storylm.clean") for command in ran), ran


@pytest.mark.parametrize("sweep", sorted((REPO / "config" / "sweeps").glob("*.yaml")), ids=lambda path: path.name)
def test_a_sweep_describes_the_default_as_it_is_and_points_to_where_it_was_measured(sweep):
    """A sweep's comments restate the default it varies (its budget, its depth and width) and say where its
    figures are: both go stale when the default is tuned again."""
    from storylm.plan.schema import defaults

    default = defaults()
    text = sweep.read_text(encoding="utf-8")
    comments = "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    budgets = re.findall(r"default(?:'s| model and its)? ([\d.]+)M tokens|([\d.]+)M tokens\)?$", comments, re.M)
    for budget in [a or b for a, b in budgets]:
        assert float(budget) * 1e6 == default["train"]["max_tokens"], (sweep.name, budget)
    for layers, width in re.findall(r"(\d+) layers, width (\d+)", comments):
        assert (int(layers), int(width)) == (default["model_config"]["n_layer"], default["model_config"]["n_embd"])
    pointed = re.findall(r"(README\.md|docs/[\w-]+\.md)", comments)
    assert pointed, f"{sweep.name} says nowhere where its figures are"
    for doc in pointed:
        assert f"config/sweeps/{sweep.name}" in (REPO / doc).read_text(encoding="utf-8"), (sweep.name, doc)


def test_the_readme_gives_one_duration_for_the_default_run():
    """The first lines promise a duration; the measured figures further down give it to the second."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    promised = re.search(r"default config: .*?about (\d+) minutes on 2 CPU", " ".join(text.split()))
    minutes, seconds = re.search(r"(\d+) min (\d+) s for `snakemake --cores all results/samples.txt`",
                                 " ".join(text.split())).groups()
    assert promised and int(promised[1]) == round(int(minutes) + int(seconds) / 60)


def reliability_tests() -> dict[str, set[str]]:
    """{test module: the tests docs/reliability.md names in it}; a module named alone maps to an empty set."""
    text = (REPO / "docs" / "reliability.md").read_text(encoding="utf-8")
    defined = {path.name: set(re.findall(r"^def (test_\w+)", path.read_text(encoding="utf-8"), re.M))
               for path in (REPO / "tests").glob("test_*.py")}
    named: dict[str, set[str]] = {}
    for row in re.findall(r"^\|.*\|\s*$", text, re.M):
        for ref in re.findall(r"`((?:test_\w+\.py)?(?:::)?(?:test_\w+)?)`", row.rsplit("|", 2)[-2]):
            module, _, test = ref.rpartition("::") if "::" in ref else ((ref, "", "") if ref.endswith(".py")
                                                                       else ("", "", ref))
            if not module:
                holders = [name for name, tests in defined.items() if test in tests]
                assert holders, f"docs/reliability.md names {test}, which no test module defines"
                module = holders[0]
            assert module in defined, f"docs/reliability.md names {module}, which does not exist"
            assert not test or test in defined[module], f"docs/reliability.md: {module} has no {test}"
            named.setdefault(module, set()).update({test} - {""})
    return named


def test_each_reliability_promise_names_a_test_that_exists_and_the_guide_says_where_they_are():
    named = reliability_tests()
    assert len(named) > 1 and sum(map(len, named.values())) >= 20, named
    guide = " ".join((REPO / "docs" / "development.md").read_text(encoding="utf-8").split())
    sentence = re.search(r"\*\*Reliability and statistics have their own suites:\*\*(.*?)(?: - |$)", guide)[1]
    for module in named:
        assert f"tests/{module}" in sentence or f"`{module}`" in sentence, module
