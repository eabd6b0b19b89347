# The evaluate stage: val loss, perplexity, bits per character and loss curves of the final checkpoint.


rule evaluate:
    input:
        checkpoint=role("evaluate", "final model"),
        train_log=role("evaluate", "train log"),
        shards=role("evaluate", "shards"),
        train=role("evaluate", "train split"),
        val=role("evaluate", "val split"),
        corpus_stats=role("evaluate", "corpus stats"),
        extra_sets=extra_set_files,
    output:
        metrics=stage_file("evaluate", "metrics.json"),
        plot=stage_file("evaluate", "loss.png"),
        stories=stage_file("evaluate", "story_scores.tsv"),
    log:
        log_path("evaluate"),
    benchmark:
        benchmark_path("evaluate")
    wildcard_constraints:
        hash=hash_pattern("evaluate"),
    conda:
        ENV
    params:
        record=record("evaluate"),
        checkpoint_dir=input_dir("checkpoint"),
        shards=input_dir("shards"),
        seq_length=stage_setting("evaluate", "train", "max_seq_length"),
        out=output_dir("metrics"),
    shell:
        "python -m storylm.evaluate --record {params.record:q} --checkpoint {params.checkpoint_dir}"
        " --shards {params.shards} --train-log {input.train_log} --seq-length {params.seq_length}"
        " --train {input.train} --val {input.val} --out {params.out} > {log} 2>&1"
