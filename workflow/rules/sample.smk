# Stage 6: stories sampled from the final checkpoint, with the sample figures.


rule sample:
    input:
        checkpoint=final_checkpoint("sample"),
    output:
        samples="results/sample/{hash}/samples.txt",
        json="results/sample/{hash}/samples.json",
        consistency="results/sample/{hash}/consistency.json",
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
        "python -m storylm.sample --record {params.record:q} --hashes {params.hashes:q}"
        " --checkpoint {params.checkpoint_dir} --out {params.out} > {log} 2>&1"
