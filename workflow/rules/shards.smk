# The shards stage: litdata shards of token ids (EOS after each story) under train/ and val/.


rule shards:
    input:
        unpack(stage_inputs("shards")),
    output:
        **stage_outputs("shards"),
    log:
        log_path("shards"),
    benchmark:
        benchmark_path("shards")
    wildcard_constraints:
        hash=hash_pattern("shards"),
    conda:
        ENV
    threads: 16
    params:
        stage=protocol("shards"),
    shell:
        "python -m storylm.shards {params.stage} --workers {threads} > {log} 2>&1"
