# The tokenizer_download and tokenizer stages: the tokenizer, trained on the train split or copied from
# a pretrained one (local or from the hub).


rule tokenizer_download:
    output:
        manifest=stage_file("tokenizer_download", "manifest.json"),
    log:
        log_path("tokenizer_download"),
    wildcard_constraints:
        hash=hash_pattern("tokenizer_download"),
    conda:
        ENV
    params:
        tokenizer=settings("tokenizer_download"),
        out=output_dir("manifest"),
    shell:
        "python -m storylm.download --tokenizer --config {params.tokenizer:q} --out {params.out} > {log} 2>&1"


rule tokenizer:
    input:
        train=role("tokenizer", "train split"),
        val=role("tokenizer", "val split"),
        pretrained=tokenizer_files,
    output:
        config=stage_file("tokenizer", "tokenizer_config.json"),
        stats=stage_file("tokenizer", "stats.json"),
    log:
        log_path("tokenizer"),
    benchmark:
        benchmark_path("tokenizer")
    wildcard_constraints:
        hash=hash_pattern("tokenizer"),
    conda:
        ENV
    params:
        record=record("tokenizer"),
        corpus=input_dir("train"),
        pretrained=pretrained_tokenizer_args,
        out=output_dir("stats"),
    shell:
        "python -m storylm.tokenizer --record {params.record:q} --corpus {params.corpus} {params.pretrained}"
        " --out {params.out} > {log} 2>&1"
