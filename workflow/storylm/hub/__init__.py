"""The export folder and its clients: transformers, GGUF for llama.cpp, ctranslate2, lm-eval, the card."""
