"""storylm: the Python package behind the Snakemake rules (workflow/rules/*.smk).

Module map. Stage commands are run by the rules as `python -m storylm.<module>`; each writes one
stage folder (storylm.plan.stages names it) and imports helpers, never another stage command. A stage
added later may be left out of this map: its row in the stage table and its docstring say what it is.

Stage commands, in the order they run:
    download        the raw corpus files (hf, url, local), and a hub tokenizer's files
    corpus          stories cleaned, deduplicated and split into train.jsonl / val.jsonl
    tokenizer       a byte-level BPE trained on the train split, or a pretrained tokenizer copied
    shards          token ids of every story into litdata shards (train/, val/)
    pretrain        the litgpt pretrain YAML rendered, then `litgpt pretrain --config` through the training runner
    evaluate        val loss, bits per character, extra sets and loss curves of the final checkpoint
    sample          stories from the final checkpoint, with their figures and the checker's verdicts
    export          the final model as a Hugging Face folder
    report          each run's results folder, the runs table, the comparison plot, all samples

Tools a person runs:
    check           stage folders checked against the files their records list
    clean           list stage folders with the runs that use them; remove the unused ones
    compare         two runs side by side in a terminal: intervals, differences, verdicts
    config_docs     config/README.md's table of keys, from config/schema.yaml

Helpers, in subpackages from the bottom layer up: a module imports only from its own
subpackage and the ones listed above it (tests/test_docs.py checks it), never a command.

storylm.io, files and the error model:
    entry           the error model (StageError, one line, exit 1) and atomic writes
    filehash        sha256 of files
    archive         safe extraction of .tar.gz archives
    manifest        a download folder's manifest.json
    readers         story texts from .jsonl, .json, .parquet and .txt files, every problem counted
    jsonl           the corpus stage's split files
    stagelock       an exclusive lock on a stage folder for a stage command's whole life
    environment     the machine a stage ran on (threads, CPU, GPU, versions)
    contents        a finished stage folder's files, with sizes and sha256s, and the check against them
    stopjobs        a SIGTERM to snakemake passed on to its running jobs, so a training saves and stops
    progress        a long stage's one live line: in place on a terminal, a few lines in a log

storylm.stories, the text of stories:
    storytext       the one cleaning rule of stories
    storygen        the builtin corpus: a seeded generator of Chinese children's stories
    consistency     the builtin-world story checker (also a command on a file of stories)
    extra_sets      evaluate.extra_sets: a user's own stories, read strictly
    sample_metrics  figures of sampled stories that hold for any corpus
    train_copy      how much sampled text is copied from the train split

storylm.model, litgpt's model, tokens and training:
    tokens          the one owner of the tokenizer: its folder read once, ids as litgpt makes them
    checkpoint      the one loader of litgpt checkpoints
    generation      stories of one prompt in batches, each from its own seed
    training_runner a litgpt training any stage can run: locked, resumed, set aside, stopped, requeued
    litgpt_train    litgpt's CLI that saves and stops at a signal or before the Slurm job's end
    precision       what `precision: auto` trains in on this machine (bf16-mixed where it has bf16)

storylm.results, figures and comparisons:
    litgpt_log      loss curves and throughput from litgpt's printed log
    figures         which JSON files hold figures, their numbers by dotted key, what the val figures measure
    summary         one training's results in one place (metrics, figures, throughput, FLOPs)
    stats           intervals and verdicts (seed spread, story noise)
    comparison      the runs tables with intervals, and verdicts between runs

storylm.plan, what to run:
    schema          config/schema.yaml: validation and the one source of defaults
    added_keys      keys added to the schema after the hashes were pinned: at their default they move no folder
    stages          the stage table: folders, inputs, fingerprints, hashes, what a key reruns
    config          config checks the schema cannot express
    runs            a config's runs and their seeds resolved, and the plan of every stage folder they need
    stage           the protocol of every stage command: its record checked, its folder locked, the record last
    integrity       finished folders checked before each run; a damaged one's record set aside, so it is rebuilt

storylm.hub, the export folder and its clients:
    folder          the export folder's files: their names, what each holds, the one logits tolerance
    hf_model        a litgpt model as LlamaForCausalLM (MistralForCausalLM for odd head widths)
    hf_tokenizer    a litgpt tokenizer as a transformers tokenizer class
    gguf_export     the model as model.gguf for llama.cpp
    export_check    an export folder loaded with transformers and compared with litgpt
    clients         an export run by each installed client (transformers, llama.cpp, ctranslate2, lm-eval)
    lm_eval_task    the export's lm-eval task, and the figures it gives computed in lm-eval's windows
    model_card      the export's README.md
"""
