# Stage 2: the tokenizer, trained on the train split or copied from a pretrained one (local or from the hub).


rule tokenizer_download:
    output:
        manifest="Data/raw/{hash}/manifest.json",
    wildcard_constraints:
        hash=hash_pattern("tokenizer_download"),
    params:
        tokenizer=settings("tokenizer_download"),
        out=output_dir("manifest"),
    log:
        log_path("tokenizer_download"),
    conda:
        ENV
    shell:
        "{STORYLM}.download --tokenizer --config {params.tokenizer:q} --out {params.out} > {log} 2>&1"


rule tokenizer:
    input:
        train=corpus_split("tokenizer", "train"),
        val=corpus_split("tokenizer", "val"),
        pretrained=tokenizer_files,
    output:
        config="Data/tokenizer/{hash}/tokenizer_config.json",
        stats="Data/tokenizer/{hash}/stats.json",
    wildcard_constraints:
        hash=hash_pattern("tokenizer"),
    params:
        record=record("tokenizer"),
        corpus=input_dir("train"),
        pretrained=pretrained_tokenizer_args,
        out=output_dir("stats"),
    log:
        log_path("tokenizer"),
    benchmark:
        benchmark_path("tokenizer")
    conda:
        ENV
    shell:
        "{STORYLM}.tokenizer --record {params.record:q} --corpus {params.corpus} {params.pretrained}"
        " --out {params.out} > {log} 2>&1"
