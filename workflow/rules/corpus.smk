# The download and corpus stages: the raw stories (download for hf/url/local sources), cleaned and
# split into train/val JSONL.


rule download:
    output:
        **stage_outputs("download"),
    log:
        log_path("download"),
    wildcard_constraints:
        hash=hash_pattern("download"),
    conda:
        ENV
    params:
        stage=protocol("download"),
    run:
        # A local source's paths are read from the plan here, not passed as params: a folder moved (and
        # corpus.local.paths updated) holds the same files, and a changed param would rerun every stage.
        paths = " ".join(f"--local {shlex.quote(path)}" for path in local_paths(wildcards))
        shell("python -m storylm.download {params.stage} {paths} > {log} 2>&1")


rule corpus:
    input:
        unpack(stage_inputs("corpus")),
    output:
        **stage_outputs("corpus"),
    log:
        log_path("corpus"),
    benchmark:
        benchmark_path("corpus")
    wildcard_constraints:
        hash=hash_pattern("corpus"),
    conda:
        ENV
    params:
        stage=protocol("corpus"),
    shell:
        "python -m storylm.corpus {params.stage} > {log} 2>&1"
