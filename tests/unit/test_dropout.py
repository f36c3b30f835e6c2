"""CheapDropout, the CPU's LoRA dropout: the same Bernoulli mask as nn.Dropout, by its statistics; a mask that
depends on the seed alone; the gradient of what it kept; and PEFT's dropout swapped in a LoRA model without
touching what is saved."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from codex_trainer.dropout import CheapDropout, cheapen_lora_dropout
from codex_trainer.model import wrap_peft
from codex_trainer.spec import PeftSpec

N = 2_000_000


@pytest.mark.parametrize("p", [1e-5, 1e-4, 0.001, 0.05, 0.1, 0.5, 0.999, 0.99999])
def test_elements_are_dropped_with_probability_p_and_the_mean_is_kept(p):
    """Any p the spec allows, [0, 1): far from 0 and 1 by the cheap mask, elsewhere by PEFT's own dropout."""
    torch.manual_seed(0)
    out = CheapDropout(p).train()(torch.ones(N))
    dropped = (out == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=5 * math.sqrt(p * (1 - p) / N))
    assert out.mean().item() == pytest.approx(1.0, abs=5 * math.sqrt(p / (1 - p) / N))


def test_neighbouring_elements_are_dropped_independently():
    """Two elements come from one 32-bit draw: they must not move together (nor repeat along a row)."""
    torch.manual_seed(1)
    kept = (CheapDropout(0.3).train()(torch.ones(64, N // 64)) != 0).float()
    flat = kept.reshape(-1)
    for lag in (1, 2, 3):
        assert abs(torch.corrcoef(torch.stack([flat[:-lag], flat[lag:]]))[0, 1].item()) < 0.005
    assert abs(torch.corrcoef(torch.stack([kept[:-1].reshape(-1), kept[1:].reshape(-1)]))[0, 1].item()) < 0.005


def test_the_mask_depends_on_the_seed_alone_and_eval_or_p_0_change_nothing():
    drop = CheapDropout(0.2).train()
    x = torch.randn(33, 17)
    torch.manual_seed(5)
    a = drop(x)
    torch.manual_seed(5)
    assert torch.equal(drop(x), a)
    assert not torch.equal(drop(x), a)
    assert drop.eval()(x) is x
    assert CheapDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        CheapDropout(1.0)


def test_the_gradient_flows_through_the_kept_elements_only_scaled_as_they_are():
    x = torch.randn(40, 30, requires_grad=True)
    torch.manual_seed(2)
    y = CheapDropout(0.25).train()(x)
    y.backward(torch.ones_like(y))
    kept = y.detach() != 0
    scale = (y.detach()[kept] / x.detach()[kept]).unique()
    assert torch.allclose(scale, scale[0]) and scale[0].item() == pytest.approx(1 / 0.75, rel=1e-4)
    assert torch.equal(x.grad, kept.float() * scale[0])


def test_a_lora_model_gets_it_for_every_dropout_and_saves_the_same_adapters():
    torch.manual_seed(0)
    base = LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    )
    model = wrap_peft(base, PeftSpec(dropout=0.1), base_name="")
    keys = set(model.state_dict())
    ids = torch.randint(0, 32, (2, 8))
    before = model.eval()(input_ids=ids).logits
    assert cheapen_lora_dropout(model) == 2 * 7  # seven projections a layer
    assert not any(type(m) is nn.Dropout for m in model.modules())
    assert set(model.state_dict()) == keys
    assert torch.equal(model.eval()(input_ids=ids).logits, before)
    assert cheapen_lora_dropout(wrap_peft(LlamaForCausalLM(base.config), PeftSpec(dropout=0.0), base_name="")) == 0
