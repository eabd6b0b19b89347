# Stage 5: val loss, perplexity, bits per character and loss curves of the final checkpoint.


rule evaluate:
    input:
        checkpoint=rules.pretrain.output.checkpoint,
        shards=rules.shards.output.stats,
    output:
        metrics=f"{DIRS['evaluate']}/metrics.json",
        plot=f"{DIRS['evaluate']}/loss.png",
    params:
        record=record("evaluate"),
        checkpoint_dir=input_dir("checkpoint"),
        run_dir=input_dir("checkpoint", up=2),
        shards=input_dir("shards"),
        seq_length=config["train"]["max_seq_length"],
        out=output_dir("metrics"),
    log:
        log_path("evaluate"),
    benchmark:
        benchmark_path("evaluate")
    conda:
        ENV
    shell:
        "python -m storylm.evaluate --record {params.record:q} --checkpoint {params.checkpoint_dir}"
        " --shards {params.shards} --train-log {params.run_dir}/train.log --seq-length {params.seq_length}"
        " --out {params.out} > {log} 2>&1"
