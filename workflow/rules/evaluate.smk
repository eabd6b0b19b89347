# Stage 5: val loss, perplexity, bits per character and loss curves of the final checkpoint.


rule evaluate:
    input:
        checkpoint=final_checkpoint("evaluate"),
        train_log=upstream_file("evaluate", "pretrain", "train.log"),
        shards=shards_stats("evaluate"),
        train=corpus_split("evaluate", "train"),
        val=corpus_split("evaluate", "val"),
        corpus_stats=upstream_file("evaluate", "corpus", "stats.json"),
        extra_sets=extra_set_files,
    output:
        metrics="results/evaluate/{hash}/metrics.json",
        plot="results/evaluate/{hash}/loss.png",
        stories="results/evaluate/{hash}/story_scores.tsv",
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
