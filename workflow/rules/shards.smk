# Stage 3: litdata shards of token ids (EOS after each story) under train/ and val/.


rule shards:
    input:
        train=rules.corpus.output.train,
        val=rules.corpus.output.val,
        tokenizer=rules.tokenizer.output.config,
    output:
        stats=f"{DIRS['shards']}/stats.json",
        train_index=f"{DIRS['shards']}/train/index.json",
        val_index=f"{DIRS['shards']}/val/index.json",
    params:
        record=record("shards"),
        corpus=input_dir("train"),
        tokenizer=input_dir("tokenizer"),
        out=output_dir("stats"),
    threads: 16
    log:
        log_path("shards"),
    benchmark:
        benchmark_path("shards")
    conda:
        ENV
    shell:
        "python -m storylm.shards --record {params.record:q} --corpus {params.corpus} --tokenizer {params.tokenizer}"
        " --workers {threads} --out {params.out} > {log} 2>&1"
