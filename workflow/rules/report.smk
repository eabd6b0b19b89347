# Each run's results in results/runs/<run>/, every run side by side in results/runs.tsv and
# results/compare.png, and every run's stories in results/samples.txt. Flagged with report()
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
            "results/runs/{run}/samples.txt",
            caption="../report/samples.rst",
            category="{run}",
            labels={"run": "{run}", "figure": "sampled stories"},
        ),
        metrics="results/runs/{run}/metrics.json",
        plot=report(
            "results/runs/{run}/loss.png",
            caption="../report/loss.rst",
            category="{run}",
            labels={"run": "{run}", "figure": "loss curves"},
        ),
        config=report(
            "results/runs/{run}/config.yaml",
            caption="../report/config.rst",
            category="{run}",
            labels={"run": "{run}", "figure": "resolved config"},
        ),
        curve="results/runs/{run}/val_curve.tsv",
    log:
        "logs/run_results/{run}.log",
    wildcard_constraints:
        run="|".join(RUNS),
    conda:
        ENV
    params:
        info=run_info,
        pretrain_dir=input_dir("pretrain_config"),
        evaluate_dir=input_dir("evaluate"),
        sample_dir=input_dir("samples"),
        out=output_dir("metrics"),
    shell:
        "python -m storylm.report run --info {params.info:q} --pretrain-dir {params.pretrain_dir}"
        " --evaluate-dir {params.evaluate_dir} --sample-dir {params.sample_dir} --out {params.out} > {log} 2>&1"


rule compare_runs:
    input:
        metrics=expand("results/runs/{run}/metrics.json", run=RUNS),
        curves=expand("results/runs/{run}/val_curve.tsv", run=RUNS),
    output:
        table=report(
            "results/runs.tsv",
            caption="../report/runs.rst",
            category="1. Runs compared",
            labels={"figure": "runs table"},
        ),
        plot=report(
            "results/compare.png",
            caption="../report/compare.rst",
            category="1. Runs compared",
            labels={"figure": "val loss and bits per character"},
        ),
        summary="results/runs_summary.tsv",  # shown on the report's first page (workflow/report/workflow.rst)
    log:
        "logs/compare_runs.log",
    conda:
        ENV
    params:
        run_dirs=expand("results/runs/{run}", run=RUNS),
    shell:
        "python -m storylm.report compare --run-dirs {params.run_dirs} --table {output.table} --plot {output.plot}"
        " --summary {output.summary} > {log} 2>&1"


rule all_samples:
    input:
        expand("results/runs/{run}/samples.txt", run=RUNS),
    output:
        "results/samples.txt",
    log:
        "logs/all_samples.log",
    conda:
        ENV
    params:
        runs=RUNS,
    shell:
        "python -m storylm.report samples --runs {params.runs} --files {input} --out {output} > {log} 2>&1"


# With one run, its metrics and loss curve also sit where they always have (with several, each
# run's are in results/runs/<run>/).
if ONE_RUN:

    localrules:
        single_run,

    rule single_run:
        input:
            metrics=expand("results/runs/{run}/metrics.json", run=RUNS),
            plot=expand("results/runs/{run}/loss.png", run=RUNS),
        output:
            metrics="results/metrics.json",
            plot="results/loss.png",
        log:
            "logs/single_run.log",
        conda:
            ENV
        shell:
            "(cp {input.metrics} {output.metrics} && cp {input.plot} {output.plot}) > {log} 2>&1"
