# The pretrain stage: render the litgpt pretrain YAML, then run `litgpt pretrain --config` on it.
#
# Declared outputs are what a finished training leaves: the final checkpoint, its litgpt
# settings and the whole train log. litgpt's step-* checkpoints and the live log (progress.log,
# appended across resumed runs) are not Snakemake's to delete when a job fails, and `resume: auto`
# continues from the latest checkpoint.
# Runs that share a pretrain hash share one training; different ones are independent jobs,
# submitted together on Slurm, one at a time locally (gpu_jobs, profiles/default).


rule pretrain_config:
    input:
        unpack(stage_inputs("pretrain")),
    output:
        **stage_outputs("pretrain", "litgpt config"),
    log:
        "logs/pretrain_config/{hash}.log",
    wildcard_constraints:
        hash=hash_pattern("pretrain"),
    conda:
        ENV
    params:
        stage=protocol("pretrain"),
    shell:
        "python -m storylm.pretrain render {params.stage} > {log} 2>&1"


# Its command is the one a user reruns by hand (the litgpt config's header says so): the config is its one argument.
rule pretrain:
    input:
        config=role("pretrain", "litgpt config"),
        shards=role("pretrain", "shards"),
    output:
        **stage_outputs("pretrain", "final model", "hyperparameters", "train log"),
    log:
        log_path("pretrain"),
    benchmark:
        benchmark_path("pretrain")
    wildcard_constraints:
        hash=hash_pattern("pretrain"),
    conda:
        ENV
    threads: 4
    resources:
        gres=gpu_resource("gres"),
        nodes=gpu_resource("nodes"),
        tasks_per_node=gpu_resource("tasks_per_node"),
        tasks=gpu_resource("tasks"),
        tasks_per_gpu=gpu_resource("tasks_per_gpu"),
        mpi=gpu_resource("mpi"),
        gpu_jobs=local_gpu_jobs,  # one GPU job at a time locally (profiles/default), any number on Slurm
    params:
        srun=srun_args,
    shell:
        "python -m storylm.pretrain run --config {input.config} {params.srun} > {log} 2>&1"
