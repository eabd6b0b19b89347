# Stage 1: the raw stories (download for hf/url/local sources), cleaned and split into train/val JSONL.


rule download:
    output:
        manifest=f"{DIRS['download']}/manifest.json",
    params:
        corpus=settings("download"),
        out=output_dir("manifest"),
    log:
        log_path("download"),
    conda:
        ENV
    shell:
        "python -m storylm.download --config {params.corpus:q} --out {params.out} > {log} 2>&1"


rule corpus:
    input:
        manifest=[] if config["corpus"]["source"] == "builtin" else rules.download.output.manifest,
    output:
        train=f"{DIRS['corpus']}/train.jsonl",
        val=f"{DIRS['corpus']}/val.jsonl",
        stats=f"{DIRS['corpus']}/stats.json",
    params:
        corpus=settings("corpus"),
        record=record("corpus"),
        raw=lambda wildcards, input: ["--raw", str(Path(input.manifest).parent)] if input.manifest else [],
        out=output_dir("stats"),
    log:
        log_path("corpus"),
    benchmark:
        benchmark_path("corpus")
    conda:
        ENV
    shell:
        "python -m storylm.corpus --config {params.corpus:q} --record {params.record:q} --out {params.out}"
        " {params.raw} > {log} 2>&1"
