"""Tokenizers: the model's own, or a built-in byte-level one that needs no download."""

from __future__ import annotations

import hashlib

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .errors import SpecError
from .sources import load_failure, resolve_source

BYTES = "bytes"


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with no merges: 256 byte tokens plus <pad>, <s>, </s>. Any text encodes."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for special in ("<pad>", "<s>", "</s>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", model_max_length=1 << 30
    )


def load_tokenizer(source: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    if source == BYTES:
        return byte_tokenizer()
    name, revision = resolve_source(source, field="spec.tokenizer", what="a tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise load_failure(e, source, "spec.tokenizer", "a tokenizer") from None
    if tok.eos_token is None:
        raise SpecError("spec.tokenizer", f"tokenizer '{source}' has no EOS token, which packing needs")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_fingerprint(tok: PreTrainedTokenizerBase) -> str:
    """A hash that changes whenever the tokenizer would encode differently."""
    h = hashlib.sha256()
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(repr(sorted(tok.get_vocab().items())).encode())
    h.update(repr((tok.eos_token_id, tok.bos_token_id, tok.pad_token_id)).encode())
    return h.hexdigest()
