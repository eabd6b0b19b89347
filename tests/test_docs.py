"""The promises the repository makes about itself: documented keys, mirrored pins, the README's commands."""

from __future__ import annotations

import yaml

from conftest import REPO


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


TOOLS = ("snakemake", "snakemake-executor-plugin-slurm", "pytest", "pytest-xdist", "snakefmt", "ruff")


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


def test_the_config_readme_table_is_the_schemas():
    from storylm import config_docs

    readme = (REPO / "config/README.md").read_text(encoding="utf-8")
    assert readme == config_docs.readme_with_table(readme), "run: python -m storylm.config_docs"
    # Each default appears in its row, as the schema has it.
    assert "| `sample.temperature` | `0.4` |" in readme and "| `shards.chunk_bytes` | `\"16MB\"` |" in readme


def test_the_embedded_default_is_the_schemas_defaults():
    """One source of defaults: config/config.yaml sets nothing the schema does not already default to."""
    from storylm.runs import differences
    from storylm.schema import defaults, validate

    default_file = yaml.safe_load((REPO / "config/config.yaml").read_text())
    assert differences(defaults(), validate(default_file)) == {}
