# Stage 1: the raw stories (download for hf/url/local sources), cleaned and split into train/val JSONL.


rule download:
    output:
        manifest="Data/raw/{hash}/manifest.json",
    wildcard_constraints:
        hash=hash_pattern("download"),
    params:
        corpus=settings("download"),
        out=output_dir("manifest"),
    log:
        log_path("download"),
    conda:
        ENV
    shell:
        "{STORYLM}.download --config {params.corpus:q} --out {params.out} > {log} 2>&1"


rule corpus:
    input:
        manifest=download_manifest,
    output:
        train="Data/corpus/{hash}/train.jsonl",
        val="Data/corpus/{hash}/val.jsonl",
        stats="Data/corpus/{hash}/stats.json",
    wildcard_constraints:
        hash=hash_pattern("corpus"),
    params:
        corpus=settings("corpus"),
        record=record("corpus"),
        raw=raw_args,
        out=output_dir("stats"),
    log:
        log_path("corpus"),
    benchmark:
        benchmark_path("corpus")
    conda:
        ENV
    shell:
        "{STORYLM}.corpus --config {params.corpus:q} --record {params.record:q} --out {params.out}"
        " {params.raw} > {log} 2>&1"
