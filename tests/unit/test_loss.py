"""The loss the loop trains on: the same number and gradients as transformers' own, a chunk of logits at a
time; and packed documents that neither attend to nor predict one another."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from codex_trainer.batches import collate
from codex_trainer.data import pack, truncate
from codex_trainer.loss import LanguageModelLoss, per_document

VOCAB = 300


def _model(tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).float()


def _lora(model: LlamaForCausalLM, modules_to_save: list[str] | None, targets: tuple = ()) -> torch.nn.Module:
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", *targets], modules_to_save=modules_to_save
    )
    peft = get_peft_model(model, config)
    for p in peft.parameters():  # LoRA's B starts at zero: move it, so its gradient depends on A
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    return peft


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 50), generator=g)
    labels = ids.clone()
    labels[1, 35:] = -100  # padding
    labels[2, :20] = -100
    mask = (labels != -100).long()
    mask[2] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: _model(), id="full model, trainable head"),
        pytest.param(lambda: _lora(_model(tie=True), None), id="lora, frozen tied head"),
        pytest.param(lambda: _lora(_model(), ["lm_head", "embed_tokens"]), id="lora, head in modulesToSave"),
        # a head that is not one plain linear layer: each chunk's logits are recomputed in the backward pass
        pytest.param(lambda: _lora(_model(), None, ("lm_head",)), id="lora on the head itself"),
    ],
)
def test_chunked_loss_and_gradients_equal_transformers_own(make):
    model, batch = make(), _batch()
    expected = model(**batch).loss
    expected.backward()
    want = _grads(model)

    # chunks of 7 positions: many chunks, one of them short
    got = LanguageModelLoss(model, chunk_bytes=4 * VOCAB * 7)(**batch)
    got.backward()
    have = _grads(model)

    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    assert want.keys() == have.keys() and want
    for name in want:
        torch.testing.assert_close(have[name], want[name], atol=1e-5, rtol=1e-4, msg=name)


def test_chunked_loss_without_gradients_matches_too():
    model, batch = _model(), _batch()
    with torch.no_grad():
        expected = model(**batch).loss
        got = LanguageModelLoss(model, chunk_bytes=4 * VOCAB * 5)(**batch)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("scaled", [False, True], ids=["chunked", "own forward"])
def test_the_exact_predictions_are_counted_a_chunk_at_a_time(scaled):
    model, batch = _model(), _batch()
    if scaled:
        model.config.logit_scale = 0.5  # Llama ignores it: same logits, through the model's own forward
    with torch.no_grad():
        logits = model(**batch).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        want = int(((logits.argmax(-1) == labels) & (labels != -100)).sum())
        hits: list[torch.Tensor] = []
        LanguageModelLoss(model, chunk_bytes=4 * VOCAB * 7)(**batch, hits=hits)
    assert sum(int(h) for h in hits) == want > 0
    with pytest.raises(ValueError, match="without gradients"):
        LanguageModelLoss(model)(**batch, hits=[])


def test_a_model_that_scales_its_logits_keeps_its_own_forward():
    model = _model()
    model.config.logit_scale = 0.5  # e.g. Cohere: logits are more than the head's output
    assert not LanguageModelLoss(model).chunked
    assert LanguageModelLoss(_model()).chunked


def _docs() -> list[np.ndarray]:
    g = np.random.default_rng(3)
    return [g.integers(1, VOCAB, n).astype(np.int32) for n in (13, 21, 9, 30)]


def test_a_packed_document_gets_the_logits_and_loss_it_gets_alone():
    model = _model().eval()
    docs = _docs()
    packed = pack(docs, sum(map(len, docs)))  # one block holding all four documents
    batch = collate(packed, np.array([0]), pad_id=0)
    loss = LanguageModelLoss(model)
    with torch.no_grad():
        # without a cache: with one, transformers does not look for packed documents in the position ids
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for doc in docs:
            alone = collate(truncate([doc], 64), np.array([0]), pad_id=0)
            want = model(input_ids=alone["input_ids"]).logits[0]
            torch.testing.assert_close(logits[start : start + len(doc)], want, atol=1e-5, rtol=1e-5)
            # the document's loss inside the block: its own labels only
            labels = torch.full_like(batch["labels"], -100)
            labels[0, start : start + len(doc)] = batch["labels"][0, start : start + len(doc)]
            packed_inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "labels": labels}
            by_mask = loss(**packed_inputs)  # transformers' block-diagonal mask from the position ids
            by_document = loss(**packed_inputs, document_segments=batch["document_segments"])  # attention.py
            assert by_mask.item() == pytest.approx(loss(**alone).item(), abs=1e-5)
            assert by_document.item() == pytest.approx(loss(**alone).item(), abs=1e-5)
            start += len(doc)


def test_document_attention_gives_the_masks_loss_and_gradients_over_rows_of_different_layouts():
    model = _lora(_model(), ["lm_head"])
    split = pack(_docs(), 16)  # rows holding one, two or three documents' pieces; some rows alike
    batch = collate(split, np.arange(split.rows), pad_id=0)
    assert 1 < len(set(batch["document_segments"])) < split.rows
    loss = LanguageModelLoss(model)
    by_mask = loss(**{k: v for k, v in batch.items() if k != "document_segments"})
    by_mask.backward()
    want = _grads(model)
    by_document = loss(**batch)
    by_document.backward()
    assert model.config._attn_implementation == "sdpa"  # switched back after the forward
    assert by_document.item() == pytest.approx(by_mask.item(), abs=1e-6)
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, want[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_model_keeping_its_own_forward_weighs_tokens_by_the_steps_count_too():
    batch = _batch()
    own = _model()
    own.config.logit_scale = 0.5  # Llama ignores it: the same logits, through the model's own forward
    assert not LanguageModelLoss(own).chunked
    for n in (37.0, 250.0):
        a = LanguageModelLoss(own)(**batch, num_items=n)
        b = LanguageModelLoss(_model())(**batch, num_items=n)
        assert a.item() == pytest.approx(b.item(), abs=1e-5)


def _windowed(kind: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    extra = {"mistral": {"sliding_window": 8}, "qwen2": {"use_sliding_window": True, "sliding_window": 8}}[kind]
    common = {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}
    config = AutoConfig.for_model(
        kind, vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, **common, **extra
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").float().eval()


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_a_sliding_window_model_keeps_its_window_in_packed_rows(kind):
    """Document attention knows no window: such models keep transformers' mask, and a document longer than
    the window still gets inside a block the loss it gets alone."""
    model = _windowed(kind)
    loss = LanguageModelLoss(model)
    assert not loss.documents
    docs = _docs()
    batch = collate(pack(docs, sum(map(len, docs))), np.array([0]), pad_id=0)
    start = len(docs[0])
    labels = torch.full_like(batch["labels"], -100)
    labels[0, start : start + len(docs[1])] = batch["labels"][0, start : start + len(docs[1])]
    alone = collate(truncate([docs[1]], 64), np.array([0]), pad_id=0)
    with torch.no_grad():
        inside = loss(**(batch | {"labels": labels}))
        assert inside.item() == pytest.approx(loss(**alone).item(), abs=1e-5)


def test_without_document_positions_the_same_block_leaks_across_documents():
    """The check above can fail: plain positions over the same block let the second document see the first."""
    model = _model().eval()
    docs = _docs()
    packed = pack(docs, sum(map(len, docs)))
    ids = collate(packed, np.array([0]), pad_id=0)["input_ids"]
    with torch.no_grad():
        leaked = model(input_ids=ids).logits[0, len(docs[0]) : len(docs[0]) + len(docs[1])]
        alone = model(input_ids=torch.from_numpy(docs[1].astype(np.int64))[None]).logits[0]
    assert (leaked - alone).abs().max() > 1e-3


def test_packed_rows_go_by_document_on_a_cpu_and_through_the_mask_on_a_gpu_except_with_flash_attention():
    """The faster of the two equal ways for the device (benchmarks/document_attention.py); flash-attention
    takes no mask, so it always goes by document (never across documents)."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert per_document("sdpa", cpu) and per_document("eager", cpu)
    assert not per_document("sdpa", gpu) and not per_document("eager", gpu)
    assert per_document("flash_attention_2", gpu) and per_document("flash_attention_3", gpu)
