# Stage 4: render the litgpt pretrain YAML, then run `litgpt pretrain --config` on it.
#
# Only the final checkpoint is declared as output: litgpt's step-* checkpoints beside it are
# not Snakemake's to delete when a job fails, and `resume: auto` continues from the latest.


rule pretrain_config:
    input:
        shards=rules.shards.output.stats,
        tokenizer=rules.tokenizer.output.config,
    output:
        config=f"{DIRS['pretrain']}/pretrain.yaml",
    params:
        record=record("pretrain"),
        shards=input_dir("shards"),
        tokenizer=input_dir("tokenizer"),
        out_dir=output_dir("config"),
    log:
        f"logs/pretrain_config/{HASHES['pretrain']}.log",
    conda:
        ENV
    shell:
        "python -m storylm.pretrain render --record {params.record:q} --shards {params.shards}"
        " --tokenizer {params.tokenizer} --out-dir {params.out_dir} --output {output.config} > {log} 2>&1"


rule pretrain:
    input:
        config=rules.pretrain_config.output.config,
        shards=rules.shards.output.stats,
    output:
        checkpoint=f"{DIRS['pretrain']}/final/lit_model.pth",
    params:
        srun=srun_args,
    threads: 4
    resources:
        gres=f"gpu:{DEVICES}",  # GPUs per node (sbatch --gres)
        nodes=NODES,
        tasks_per_node=DEVICES if DEVICES > 1 else None,  # sbatch --ntasks-per-node (with mpi)
        tasks=NODES if MULTI_PROCESS and DEVICES == 1 else None,  # one task per node ...
        tasks_per_gpu=0 if MULTI_PROCESS and DEVICES == 1 else None,  # ... and no --ntasks-per-gpu
        mpi="srun" if MULTI_PROCESS else None,  # the plugin leaves the launch to our srun
        gpu_jobs=1,  # at most one GPU job at a time on a local machine (profiles/default)
    log:
        log_path("pretrain"),
    benchmark:
        benchmark_path("pretrain")
    conda:
        ENV
    shell:
        "python -m storylm.pretrain run --config {input.config} {params.srun} > {log} 2>&1"
