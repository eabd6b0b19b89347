# Stage 6: stories sampled from the final checkpoint, with the sample figures.


rule sample:
    input:
        checkpoint=final_checkpoint("sample"),
        train=corpus_split("sample", "train"),
        val=corpus_split("sample", "val"),
    output:
        samples="results/sample/{hash}/samples.txt",
        json="results/sample/{hash}/samples.json",
        consistency="results/sample/{hash}/consistency.json",
        figures="results/sample/{hash}/figures.json",
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
        " --checkpoint {params.checkpoint_dir} --train {input.train} --val {input.val}"
        " --out {params.out} > {log} 2>&1"
