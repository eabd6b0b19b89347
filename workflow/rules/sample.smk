# The sample stage: stories sampled from the final checkpoint, with the sample figures.


# The prompts against the block size, as soon as the tokenizer is built: before training, not after.
localrules:
    sample_prompts,


rule sample_prompts:
    input:
        tokenizer=role("sample", "tokenizer"),
    output:
        stage_file("sample", "prompt_tokens.json"),
    log:
        "logs/sample_prompts/{hash}.log",
    wildcard_constraints:
        hash=hash_pattern("sample"),
    priority: 50
    conda:
        ENV
    params:
        record=record("sample"),
        tokenizer=input_dir("tokenizer"),
        block_size=stage_setting("sample", "model_config", "block_size"),
    shell:
        "python -m storylm.sample prompts --record {params.record:q} --tokenizer {params.tokenizer}"
        " --block-size {params.block_size} --out {output} > {log} 2>&1"


rule sample:
    input:
        prompts=stage_file("sample", "prompt_tokens.json"),
        checkpoint=role("sample", "final model"),
        train=role("sample", "train split"),
        val=role("sample", "val split"),
    output:
        samples=stage_file("sample", "samples.txt"),
        json=stage_file("sample", "samples.json"),
        consistency=stage_file("sample", "consistency.json"),
        figures=stage_file("sample", "figures.json"),
    log:
        log_path("sample"),
    benchmark:
        benchmark_path("sample")
    wildcard_constraints:
        hash=hash_pattern("sample"),
    conda:
        ENV
    params:
        record=record("sample"),
        hashes=lineage,
        checkpoint_dir=input_dir("checkpoint"),
        out=output_dir("samples"),
    shell:
        "python -m storylm.sample stories --record {params.record:q} --hashes {params.hashes:q}"
        " --checkpoint {params.checkpoint_dir} --train {input.train} --val {input.val}"
        " --out {params.out} > {log} 2>&1"
