# storylm: raw stories -> tokenizer -> litdata shards -> litgpt pretraining -> evaluation and sampled stories.
#
#   snakemake --cores all results/samples.txt        (the embedded default config)
#   snakemake --cores all --configfile config/microstories.yaml
#   snakemake --cores all --configfile config/sweeps/model_size.yaml   (several runs, compared)
#   snakemake --profile slurm                          (on a Slurm cluster; see README)
#   snakemake --report results/report.html             (the runs table, plots and stories)
#
# The config is validated (and its defaults filled in) per run by config/schema.yaml, in
# workflow/rules/common.smk: see workflow/storylm/plan/runs.py.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# One rule file per stage, in the order of the stage table (workflow/storylm/plan/stages.py).
for rule_file in STAGE_RULE_FILES:

    include: rule_file


include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        "results/samples.txt",
        "results/runs.tsv",
        "results/compare.png",
        "results/verdicts.tsv",
        expand("{training}/{name}", training=TRAINING_DIRS, name=("metrics.json", "loss.png", "config.yaml")),
        ["results/metrics.json", "results/loss.png"] if ONE_TRAINING else [],
        run_exports(),
