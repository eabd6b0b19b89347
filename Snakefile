# storylm: raw stories -> tokenizer -> litdata shards -> litgpt pretraining -> evaluation and sampled stories.
#
#   snakemake --cores all results/samples.txt        (the embedded default config)
#   snakemake --cores all --configfile config/microstories.yaml
#   snakemake --profile slurm                          (on a Slurm cluster; see README)

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/tokenizer.smk"
include: "workflow/rules/shards.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        REPORT["samples"],
        REPORT["metrics"],
        REPORT["plot"],
