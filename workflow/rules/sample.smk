# The sample stage: stories sampled from the final checkpoint, with the sample figures.


# The prompts against the block size, as soon as the tokenizer is built: before training, not after.
localrules:
    sample_prompts,


rule sample_prompts:
    input:
        unpack(stage_inputs("sample", "tokenizer")),
    output:
        **stage_outputs("sample", "prompt tokens"),
    log:
        "logs/sample_prompts/{hash}.log",
    wildcard_constraints:
        hash=hash_pattern("sample"),
    priority: 50
    conda:
        ENV
    params:
        stage=protocol("sample", "tokenizer"),
        block_size=stage_setting("sample", "model_config", "block_size"),
    shell:
        "python -m storylm.sample prompts {params.stage} --block-size {params.block_size} > {log} 2>&1"


# The stories step reads the prompts' check of the first step besides the model and the splits.
SAMPLE_READS = ("prompt tokens", "final model", "train split", "val split")


rule sample:
    input:
        unpack(stage_inputs("sample", *SAMPLE_READS)),
    output:
        **stage_outputs("sample", "samples text", "samples", "sample checks", "sample figures"),
    log:
        log_path("sample"),
    benchmark:
        benchmark_path("sample")
    wildcard_constraints:
        hash=hash_pattern("sample"),
    conda:
        ENV
    params:
        stage=protocol("sample", *SAMPLE_READS),
        hashes=lineage,
    shell:
        "python -m storylm.sample stories {params.stage} --hashes {params.hashes:q} > {log} 2>&1"
