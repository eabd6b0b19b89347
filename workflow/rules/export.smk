# The export stage: the final model as a Hugging Face folder that transformers loads as it is
# (docs/export.md).


rule export:
    input:
        checkpoint=role("export", "final model"),
        hyperparameters=role("export", "hyperparameters"),
        metrics=role("export", "metrics"),
        stories=role("export", "story scores"),
        samples=role("export", "samples"),
        val=role("export", "val split"),
        tokenizer=role("export", "tokenizer"),
    output:
        weights=stage_file("export", "model.safetensors"),
    log:
        log_path("export"),
    benchmark:
        benchmark_path("export")
    wildcard_constraints:
        hash=hash_pattern("export"),
    conda:
        ENV
    params:
        record=record("export"),
        checkpoint_dir=input_dir("checkpoint"),
        evaluate_dir=input_dir("metrics"),
        sample_dir=input_dir("samples"),
        tokenizer_dir=input_dir("tokenizer"),
        out=output_dir("weights"),
    shell:
        "python -m storylm.export --record {params.record:q} --checkpoint {params.checkpoint_dir}"
        " --evaluate-dir {params.evaluate_dir} --sample-dir {params.sample_dir} --val {input.val}"
        " --tokenizer-dir {params.tokenizer_dir} --out {params.out}"
        " > {log} 2>&1"
