"""The export folder's files: their names and what each holds, described once.

The export stage writes them, the model card lists the ones a folder has (its "Files" section),
the client checks read them, and the tests check that a folder holds nothing this table does not
describe. docs/export.md says more about each.
"""

from __future__ import annotations

from storylm.model.tokens import LICENCE_FILES
from storylm.plan.stages import BY_NAME

WEIGHTS = BY_NAME["export"].provides["export"]  # model.safetensors: the stage's Snakemake output
GGUF = "model.gguf"
CARD = "README.md"
LM_EVAL = "lm_eval"
STAGE_RECORD = BY_NAME["export"].record  # storylm_stage.json: the stage record; config.json is the model's
CHECKS = "storylm_export.json"
CLIENTS = "storylm_clients.json"

# A difference of this much between transformers' (or a GGUF's) fp32 logits and litgpt's means a wrong
# conversion (a mis-named or mis-split weight moves logits by whole units); float rounding stays far below.
LOGITS_TOLERANCE = 1e-3

FILES = (
    ("config.json", "the transformers config: LlamaForCausalLM, or MistralForCausalLM where the heads do not fill"
                    " the hidden size"),
    (WEIGHTS, "the weights for transformers, renamed by litgpt's own copy_weights_llama"),
    (GGUF, "the same weights and tokenizer for llama.cpp, float32"),
    ("generation_config.json", "bos (end-of-text), eos, pad and the sampling settings of the sample stage"),
    ("tokenizer.json", "the tokenizer for transformers' fast tokenizers"),
    ("tokenizer.model", "the SentencePiece model, for transformers' slow LlamaTokenizer"),
    ("tokenizer_config.json", "the tokenizer's class and settings (add_bos_token false, as in training)"),
    ("special_tokens_map.json", "the tokenizer's special tokens"),
    (LM_EVAL, "an lm-eval task on the val stories the pipeline scored, runnable from any working directory"),
    (CARD, "this model card"),
    *((name, "the tokenizer's licence") for name in LICENCE_FILES),
    (STAGE_RECORD, "the storylm stage record: the export's settings and the stages it was built from"),
    (CHECKS, "what the export checked: logits and token ids against litgpt"),
    (CLIENTS, "each client's check at export (the installed ones ran for real) and the lm-eval task's figures"),
)
DESCRIBED = dict(FILES)


def undescribed(names: list[str]) -> list[str]:
    """The names of a folder's entries that FILES does not describe (a file the export forgot to describe)."""
    return sorted(name for name in names if name not in DESCRIBED)
