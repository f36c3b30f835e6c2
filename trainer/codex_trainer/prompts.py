"""`codex-train eval --prompts`: the prompts, from a file, a pipe or stdin, and each one's greedy completion."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SpecError

if TYPE_CHECKING:  # imported only when evaluating
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    Model = PreTrainedModel | PeftModel  # a causal LM, or a LoRA adapter on one


def read_prompts(name: str) -> list[str]:
    """The prompts, one per non-blank line, of a file, a pipe (`<(...)`) or stdin ("-"); read before the model
    loads, so that a wrong --prompts is said before the evaluation, not after it."""
    from .data import check_data_path

    shown = "stdin" if name == "-" else f"'{name}'"
    try:
        if name == "-":
            if sys.stdin is None:
                raise SpecError("--prompts", "stdin is closed; give the prompts' file, or pipe them in")
            if sys.stdin.isatty():
                print("codex-train: reading prompts from the terminal, one per line; Ctrl-D ends them", file=sys.stderr)
            raw = sys.stdin.buffer.read()
        else:
            path = Path(name)
            if not (path.exists() and not path.is_dir()):
                check_data_path(name, "--prompts")  # says what it is instead
            if stat.S_ISCHR(path.stat().st_mode) and not path.samefile(os.devnull):
                raise SpecError("--prompts", f"'{name}' is a device; give a file, a pipe (<(...)) or - for stdin")
            if not os.access(path, os.R_OK):
                raise SpecError("--prompts", f"'{name}' is not readable by uid {os.getuid()}")
            raw = path.read_bytes()  # a regular file or a pipe
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError("--prompts", f"{shown} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise SpecError("--prompts", f"{shown} cannot be read ({e.strerror or e})") from None
    text = text.removeprefix("\ufeff")  # the byte-order mark some editors put first, as the data readers drop it
    prompts = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if not prompts:
        raise SpecError("--prompts", f"{shown} holds no prompts (one per line)")
    return prompts


def complete_prompts(
    model: Model, tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int, device: torch.device
) -> list[dict[str, Any]]:
    import torch

    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
            # the causal LM classes and PEFT's wrapper of one generate; PreTrainedModel's annotation does not say so
            generated = model.generate(  # type: ignore[operator]
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = generated[0, ids.shape[1] :]
            out.append(
                {
                    "type": "completion",
                    "prompt": prompt,
                    "completion": tokenizer.decode(new, skip_special_tokens=True),
                    "new_tokens": int(new.numel()),
                }
            )
    return out
