# The one rule of each stage that has no rule file of its own (storylm/plan/stages.py: rule_file): its
# command, `python -m storylm.<stage>`, on the files it reads and writes by role, through the stage protocol.
# A stage with several steps, threads, GPUs or arguments beyond its record and files has its own rule file.


for spec in stages.STAGES:
    if spec.rule_file.endswith(stages.GENERIC_RULES):

        rule:
            name:
                spec.name
            input:
                unpack(stage_inputs(spec.name)),
            output:
                **stage_outputs(spec.name),
            log:
                log_path(spec.name),
            benchmark:
                benchmark_path(spec.name)
            wildcard_constraints:
                hash=hash_pattern(spec.name),
            conda:
                ENV
            params:
                stage=protocol(spec.name),
                module=f"storylm.{spec.name}",  # a param: a rule's shell is formatted when its job runs
            shell:
                "python -m {params.module} {params.stage} > {log} 2>&1"
