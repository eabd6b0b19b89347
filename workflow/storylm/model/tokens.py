"""The one owner of the tokenizer: a run's tokenizer folder read once, and token ids exactly as litgpt makes them.

Every stage that turns text into ids or ids into text (tokenizer stats, shards, the config checks,
evaluate, sample, export) holds a `StoryTokenizer`, so the ids the model is measured and sampled on
are the ids it was trained on, and no module but this one builds `litgpt.Tokenizer` or touches
the library behind it (its `processor`).

The formats litgpt (0.5) can load, and how it picks (litgpt/tokenizer.py):

- `tokenizer.json`, read by Hugging Face `tokenizers` (backend "huggingface"): what the tokenizer
  stage trains (a byte-level BPE), and most hub models' files. Its bos/eos ids come from the
  `bos_token`/`eos_token` of `tokenizer_config.json`, else from `generation_config.json`'s ids.
- `tokenizer.model`, a SentencePiece model (backend "sentencepiece"), e.g. ChatGLM3-6B's; bos/eos
  are the model's own ids.
- A folder holding both is read through `tokenizer.json` (it takes precedence); a folder with
  neither is refused. `tokenizer_config.json`'s `add_bos_token` (or a `LlamaTokenizer` class) says
  whether a bos is put before each text; stories get an eos after them, never a bos.

A pretrained tokenizer is used unchanged: the tokenizer stage copies TOKENIZER_FILES (and the
licence) into its folder, and that folder is the copy every later stage reads.
"""

from __future__ import annotations

from pathlib import Path

from storylm.io.entry import StageError

# Files of a pretrained tokenizer directory that litgpt.Tokenizer reads.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "generation_config.json")
# Licence files of a pretrained tokenizer directory: copied with it and shipped in the export, not part of its
# fingerprint (they do not change a token).
LICENCE_FILES = ("MODEL_LICENSE", "LICENSE")
NOT_A_TOKENIZER = "holds neither tokenizer.json nor tokenizer.model"

# The trained tokenizer's special tokens; ids 0, 1, 2 in this order.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


class TokenizerError(StageError):
    """A folder litgpt cannot read a tokenizer from."""


class StoryTokenizer:
    """A tokenizer folder as litgpt reads it, behind the calls the stages make."""

    def __init__(self, folder: Path):
        from litgpt import Tokenizer

        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise TokenizerError(f"{self.folder}: the tokenizer folder does not exist")
        try:
            self._litgpt = Tokenizer(self.folder)
        except NotImplementedError:
            raise TokenizerError(f"{self.folder}: {NOT_A_TOKENIZER}") from None
        self._processor = self._litgpt.processor
        self.backend = self._litgpt.backend  # "huggingface" (tokenizer.json) or "sentencepiece" (tokenizer.model)
        self.bos_id, self.eos_id, self.use_bos = self._litgpt.bos_id, self._litgpt.eos_id, self._litgpt.use_bos

    @property
    def sentencepiece(self) -> bool:
        return self.backend == "sentencepiece"

    @property
    def file(self) -> Path:
        """The file litgpt reads the vocabulary from."""
        return self.folder / ("tokenizer.model" if self.sentencepiece else "tokenizer.json")

    @property
    def vocab_size(self) -> int:
        """litgpt's vocab_size (a tokenizer.json's without its added tokens)."""
        return self._litgpt.vocab_size

    @property
    def ids(self) -> int:
        """How many ids it can produce and decode (its largest id + 1), added tokens included."""
        if self.sentencepiece:
            return self._processor.vocab_size()
        return self._processor.get_vocab_size(with_added_tokens=True)

    @property
    def unk_id(self) -> int | None:
        if self.sentencepiece:
            return self._processor.unk_id()
        return self._processor.token_to_id(SPECIAL_TOKENS[0])

    def piece(self, token_id: int) -> str:
        """The token's text as the vocabulary spells it (a SentencePiece piece, a byte-level BPE token)."""
        if self.sentencepiece:
            return self._processor.id_to_piece(token_id)
        return self._processor.id_to_token(token_id)

    def encode(self, text: str, eos: bool = False, device=None):
        """litgpt's own encode: a tensor of int ids (bos as the folder says, eos when asked)."""
        return self._litgpt.encode(text, device=device, eos=eos)

    def decode(self, ids) -> str:
        """Text of ids (a list or a tensor); special tokens are dropped, as litgpt's backends drop them."""
        import torch

        return self._litgpt.decode(ids if isinstance(ids, torch.Tensor) else torch.tensor(list(ids)))

    def encode_batch(self, texts: list[str], eos: bool = True) -> list[list[int]]:
        """encode for many texts at once through the backend's batch call, with litgpt's BOS/EOS rules,
        so shards match what litgpt itself would produce."""
        if self.sentencepiece:
            encoded = self._processor.encode(texts)
        else:
            encoded = [e.ids for e in self._processor.encode_batch(texts, add_special_tokens=False)]
        return [self._special_tokens(ids, eos) for ids in encoded]

    def _special_tokens(self, ids: list[int], eos: bool) -> list[int]:
        if self.use_bos:
            if not ids or ids[0] != self.bos_id:
                ids = [self.bos_id] + ids
        elif ids and ids[0] == self.bos_id:
            ids = ids[1:]
        if eos and (not ids or ids[-1] != self.eos_id):
            ids = ids + [self.eos_id]
        return ids
