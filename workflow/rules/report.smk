# Each training's results in results/runs/<run>/seed-<seed>/, every run side by side in
# results/runs.tsv (with 95% intervals), results/runs_by_seed.tsv, results/verdicts.tsv and
# results/compare.png, and every training's stories in results/samples.txt. Flagged with report()
# for `snakemake --report results/report.html`, one category per run. These steps only gather
# small files: on a cluster they run on the submitting host, not as jobs of their own.


localrules:
    run_results,
    compare_runs,
    all_samples,


rule run_results:
    input:
        unpack(run_inputs),
    output:
        samples=report(
            "results/runs/{run}/seed-{seed}/samples.txt",
            caption="../report/samples.rst",
            category="{run}",
            labels={"run": "{run}", "seed": "{seed}", "figure": "sampled stories"},
        ),
        metrics="results/runs/{run}/seed-{seed}/metrics.json",
        plot=report(
            "results/runs/{run}/seed-{seed}/loss.png",
            caption="../report/loss.rst",
            category="{run}",
            labels={"run": "{run}", "seed": "{seed}", "figure": "loss curves"},
        ),
        config=report(
            "results/runs/{run}/seed-{seed}/config.yaml",
            caption="../report/config.rst",
            category="{run}",
            labels={"run": "{run}", "seed": "{seed}", "figure": "resolved config"},
        ),
        curve="results/runs/{run}/seed-{seed}/val_curve.tsv",
        stories="results/runs/{run}/seed-{seed}/story_scores.tsv",
    log:
        "logs/run_results/{run}/seed-{seed}.log",
    wildcard_constraints:
        run=training_pattern(),
        seed=r"-?\d+",
    conda:
        ENV
    params:
        info=run_info,
        files=run_roles,
    shell:
        "python -m storylm.report run --info {params.info:q} {params.files} > {log} 2>&1"


rule compare_runs:
    input:
        metrics=expand("{training}/metrics.json", training=TRAINING_DIRS),
        curves=expand("{training}/val_curve.tsv", training=TRAINING_DIRS),
        stories=expand("{training}/story_scores.tsv", training=TRAINING_DIRS),
    output:
        by_seed="results/runs_by_seed.tsv",
        table=report(
            "results/runs.tsv",
            caption="../report/runs.rst",
            category="1. Runs compared",
            labels={"figure": "runs table"},
        ),
        verdicts=report(
            "results/verdicts.tsv",
            caption="../report/verdicts.rst",
            category="1. Runs compared",
            labels={"figure": "verdicts"},
        ),
        plot=report(
            "results/compare.png",
            caption="../report/compare.rst",
            category="1. Runs compared",
            labels={"figure": "val loss, bits per character and checker passes"},
        ),
        summary="results/runs_summary.tsv",  # shown on the report's first page (workflow/report/workflow.rst)
        verdicts_summary="results/verdicts_summary.tsv",  # and this one
    log:
        "logs/compare_runs.log",
    conda:
        ENV
    params:
        training_dirs=TRAINING_DIRS,
    shell:
        "python -m storylm.report compare --training-dirs {params.training_dirs} --by-seed {output.by_seed}"
        " --table {output.table} --verdicts {output.verdicts} --plot {output.plot} --summary {output.summary}"
        " --verdicts-summary {output.verdicts_summary} > {log} 2>&1"


rule all_samples:
    input:
        expand("{training}/samples.txt", training=TRAINING_DIRS),
    output:
        "results/samples.txt",
    log:
        "logs/all_samples.log",
    conda:
        ENV
    params:
        labels=training_labels(),
    shell:
        "python -m storylm.report samples --labels {params.labels:q} --files {input} --out {output} > {log} 2>&1"


# With one training (one run, one seed), its metrics and loss curve also sit where they always have.
if ONE_TRAINING:

    localrules:
        single_run,

    rule single_run:
        input:
            metrics=expand("{training}/metrics.json", training=TRAINING_DIRS),
            plot=expand("{training}/loss.png", training=TRAINING_DIRS),
        output:
            metrics="results/metrics.json",
            plot="results/loss.png",
        log:
            "logs/single_run.log",
        conda:
            ENV
        shell:
            "(cp {input.metrics} {output.metrics} && cp {input.plot} {output.plot}) > {log} 2>&1"
