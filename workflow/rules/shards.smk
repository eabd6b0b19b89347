# The shards stage: litdata shards of token ids (EOS after each story) under train/ and val/.


rule shards:
    input:
        train=role("shards", "train split"),
        val=role("shards", "val split"),
        tokenizer=role("shards", "tokenizer"),
    output:
        stats=stage_file("shards", "stats.json"),
        train_index=stage_file("shards", "train/index.json"),
        val_index=stage_file("shards", "val/index.json"),
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
        record=record("shards"),
        corpus=input_dir("train"),
        tokenizer=input_dir("tokenizer"),
        out=output_dir("stats"),
    shell:
        "python -m storylm.shards --record {params.record:q} --corpus {params.corpus} --tokenizer {params.tokenizer}"
        " --workers {threads} --out {params.out} > {log} 2>&1"
