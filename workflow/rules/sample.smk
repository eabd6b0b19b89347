# Stage 6: stories sampled from the final checkpoint, scored for consistency.


rule sample:
    input:
        checkpoint=rules.pretrain.output.checkpoint,
    output:
        samples=f"{DIRS['sample']}/samples.txt",
        json=f"{DIRS['sample']}/samples.json",
        consistency=f"{DIRS['sample']}/consistency.json",
    params:
        record=record("sample"),
        hashes=SAMPLE_LINEAGE_JSON,
        checkpoint_dir=input_dir("checkpoint"),
        out=output_dir("samples"),
    log:
        log_path("sample"),
    benchmark:
        benchmark_path("sample")
    conda:
        ENV
    shell:
        "python -m storylm.sample --record {params.record:q} --hashes {params.hashes:q}"
        " --checkpoint {params.checkpoint_dir} --out {params.out} > {log} 2>&1"
