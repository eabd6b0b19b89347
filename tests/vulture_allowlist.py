"""Names vulture (tests/test_docs.py::test_no_code_is_dead) takes for unused, that something does read."""

from types import SimpleNamespace

_ = SimpleNamespace()
_.max_seq_length  # noqa: B018 - litgpt's GPT reads it (a property setter sizes the rope cache): config.py, results.py
_.pre_tokenizer  # noqa: B018 - the tokenizers library reads both when it encodes and decodes: tokenizer.py
_.decoder  # noqa: B018
_.run_hashes  # noqa: B018 - storylm.plan.runs.Plan: the tests' way to find a run's stage folders
_.KINDS  # noqa: B018 - storylm.stories.storygen: every kind of character, for tests/test_storygen.py
_.rule_file  # noqa: B018 - storylm.plan.stages: the Snakefile includes each stage's rule file (workflow/rules/common.smk)
_.ancestors  # noqa: B018 - storylm.plan.stages: common.smk derives LINEAGE (the stages a sample descends from) from both
_.always_needed  # noqa: B018
_.stop_jobs_at_sigterm  # noqa: B018 - storylm.io.stopjobs: common.smk's onstart installs it
_.mark_damaged  # noqa: B018 - storylm.plan.integrity: common.smk calls it on the plan before each run
_.rebuild_counts  # noqa: B018 - storylm.plan.integrity: common.smk reads the counts into the stages' record params
_.with_rebuilds  # noqa: B018
_.L  # noqa: B018 - storylm.model.litgpt_train: litgpt.pretrain.setup calls L.Fabric, which install() replaces
_.get_default_supported_precision  # noqa: B018 - litgpt.pretrain.setup calls it for precision: null (auto), which install() replaces
