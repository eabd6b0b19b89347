# Stage 7: the final model as a Hugging Face folder that transformers loads as it is (docs/export.md).


rule export:
    input:
        checkpoint=final_checkpoint("export"),
        hyperparameters=upstream_file("export", "pretrain", "final/hyperparameters.yaml"),
        metrics=upstream_file("export", "evaluate", "metrics.json"),
        stories=upstream_file("export", "evaluate", "story_scores.tsv"),
        samples=upstream_file("export", "sample", "samples.json"),
        val=training_file("export", "corpus", "val.jsonl"),
        tokenizer=training_file("export", "tokenizer", "tokenizer_config.json"),
    output:
        weights="results/export/{hash}/model.safetensors",
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
