# The tokenizer_download and tokenizer stages: the tokenizer, trained on the train split or copied from
# a pretrained one (local or from the hub).


rule tokenizer_download:
    output:
        **stage_outputs("tokenizer_download"),
    log:
        log_path("tokenizer_download"),
    wildcard_constraints:
        hash=hash_pattern("tokenizer_download"),
    conda:
        ENV
    params:
        stage=protocol("tokenizer_download"),
    shell:
        "python -m storylm.download {params.stage} > {log} 2>&1"


rule tokenizer:
    input:
        unpack(stage_inputs("tokenizer")),
        pretrained=tokenizer_files,
    output:
        **stage_outputs("tokenizer"),
    log:
        log_path("tokenizer"),
    benchmark:
        benchmark_path("tokenizer")
    wildcard_constraints:
        hash=hash_pattern("tokenizer"),
    conda:
        ENV
    params:
        stage=protocol("tokenizer"),
        pretrained=pretrained_tokenizer_args,
    shell:
        "python -m storylm.tokenizer {params.stage} {params.pretrained} > {log} 2>&1"
