# Stage 2: the tokenizer, trained on the train split or copied from a pretrained directory.

PRETRAINED_TOKENIZER = config["tokenizer"]["path"] if config["tokenizer"]["kind"] == "pretrained" else None


rule tokenizer:
    input:
        train=rules.corpus.output.train,
        val=rules.corpus.output.val,
        pretrained=(
            [f"{PRETRAINED_TOKENIZER}/{name}" for name in storylm_config.TOKENIZER_FILES
             if Path(PRETRAINED_TOKENIZER, name).is_file()]
            if PRETRAINED_TOKENIZER
            else []
        ),
    output:
        config=f"{DIRS['tokenizer']}/tokenizer_config.json",
        stats=f"{DIRS['tokenizer']}/stats.json",
    params:
        record=record("tokenizer"),
        corpus=input_dir("train"),
        pretrained=["--pretrained", PRETRAINED_TOKENIZER] if PRETRAINED_TOKENIZER else [],
        out=output_dir("stats"),
    log:
        log_path("tokenizer"),
    benchmark:
        benchmark_path("tokenizer")
    conda:
        ENV
    shell:
        "python -m storylm.tokenizer --record {params.record:q} --corpus {params.corpus} {params.pretrained}"
        " --out {params.out} > {log} 2>&1"
