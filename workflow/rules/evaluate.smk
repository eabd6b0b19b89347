# The evaluate stage: val loss, perplexity, bits per character and loss curves of the final checkpoint.


rule evaluate:
    input:
        unpack(stage_inputs("evaluate")),
        extra_sets=extra_set_files,
    output:
        **stage_outputs("evaluate"),
    log:
        log_path("evaluate"),
    benchmark:
        benchmark_path("evaluate")
    wildcard_constraints:
        hash=hash_pattern("evaluate"),
    conda:
        ENV
    params:
        stage=protocol("evaluate"),
        seq_length=stage_setting("evaluate", "train", "max_seq_length"),
    shell:
        "python -m storylm.evaluate {params.stage} --seq-length {params.seq_length} > {log} 2>&1"
