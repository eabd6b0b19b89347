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
        corpus=DIRS["corpus"],
        tokenizer=DIRS["tokenizer"],
        batch_size=config["shards"]["batch_size"],
        out=DIRS["shards"],
    threads: 16
    log:
        log_path("shards"),
    benchmark:
        benchmark_path("shards")
    conda:
        ENV
    shell:
        "python -m storylm.shards --record {params.record:q} --corpus {params.corpus} --tokenizer {params.tokenizer}"
        " --batch-size {params.batch_size} --workers {threads} --out {params.out} > {log} 2>&1"
