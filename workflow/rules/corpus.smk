# The download and corpus stages: the raw stories (download for hf/url/local sources), cleaned and
# split into train/val JSONL.


rule download:
    output:
        manifest=stage_file("download", "manifest.json"),
    log:
        log_path("download"),
    wildcard_constraints:
        hash=hash_pattern("download"),
    conda:
        ENV
    params:
        corpus=settings("download"),
        out=output_dir("manifest"),
    run:
        # A local source's paths are read from the plan here, not passed as params: a folder moved (and
        # corpus.local.paths updated) holds the same files, and a changed param would rerun every stage.
        paths = " ".join(f"--local {shlex.quote(path)}" for path in local_paths(wildcards))
        shell("python -m storylm.download --config {params.corpus:q} --out {params.out} {paths} > {log} 2>&1")


rule corpus:
    input:
        manifest=download_manifest,
    output:
        train=stage_file("corpus", "train.jsonl"),
        val=stage_file("corpus", "val.jsonl"),
        stats=stage_file("corpus", "stats.json"),
    log:
        log_path("corpus"),
    benchmark:
        benchmark_path("corpus")
    wildcard_constraints:
        hash=hash_pattern("corpus"),
    conda:
        ENV
    params:
        record=record("corpus"),
        raw=raw_args,
        out=output_dir("stats"),
    shell:
        "python -m storylm.corpus --record {params.record:q} --out {params.out} {params.raw} > {log} 2>&1"
