"""The throughput benchmark's pure helpers (benchmarks/trainer_throughput.py): the FLOP count behind its MFU,
the GPU peaks it divides by, and its corpus selection. The benchmark itself is run by hand (`make bench`)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from codex_trainer.model import wrap_peft
from codex_trainer.spec import PeftSpec
from support import ROOT


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("trainer_throughput", ROOT / "benchmarks" / "trainer_throughput.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _benchmark()

# The tiny-cpu example's model: hidden 64, 2 layers, 4 query heads and 2 key/value heads of 16, MLP 128,
# the byte tokenizer's 259 ids; LoRA r 8 on all seven projections.
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 259,
}
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# By hand, per layer: q 64x64, k 64x32, v 64x32, o 64x64, gate/up/down 64x128 = 36,864 base weights;
# LoRA r 8 adds r x (in + out): q 1,024, k 768, v 768, o 1,024, gate/up/down 1,536 each = 8,192.
BASE = 2 * 36_864
ADAPTERS = 2 * 8_192
HEAD = 259 * 64


def _tiny(tied: bool, modules_to_save: list[str]):
    config = AutoConfig.for_model("llama", tie_word_embeddings=tied, **TINY)
    peft = PeftSpec.model_validate(
        {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": PROJECTIONS, "modulesToSave": modules_to_save}
    )
    return wrap_peft(AutoModelForCausalLM.from_config(config), peft)


def test_lora_flops_are_four_per_frozen_weight_and_six_per_trained_one():
    assert bench.lora_flops_per_token(frozen=1_000, trained=10) == 4_060
    # attention: QK and AV, 2 x 2 x width x context forward and twice that backward, per layer
    assert bench.lora_flops_per_token(0, 0, layers=2, width=64, context=512.5) == 12 * 2 * 64 * 512.5


def test_a_trained_head_beside_the_adapters_counts_as_trained_and_its_frozen_original_not_at_all():
    frozen, trained = bench.matmul_params(_tiny(tied=False, modules_to_save=["embed_tokens", "lm_head"]))
    assert (frozen, trained) == (BASE, ADAPTERS + HEAD)
    assert bench.lora_flops_per_token(frozen, trained) == 4 * 73_728 + 6 * 32_960 == 492_672


def test_a_tied_frozen_head_is_a_frozen_matmul_counted_once():
    frozen, trained = bench.matmul_params(_tiny(tied=True, modules_to_save=[]))
    assert (frozen, trained) == (BASE + HEAD, ADAPTERS)


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H200", 989e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA A10G", 125e12),
        ("Tesla T4", None),
        ("cpu", None),
    ],
)
def test_the_peak_comes_from_the_device_name_and_an_unknown_device_has_none(name, peak):
    assert bench.peak_bf16_flops(name) == peak


def test_the_corpus_is_the_standard_library_sorted_without_tests_gui_or_third_party_packages(tmp_path):
    for rel in [
        "zipfile.py",
        "json/__init__.py",
        "abc.py",
        "json/decoder.py",
        "test/test_abc.py",
        "unittest/test/test_case.py",
        "idlelib/editor.py",
        "site-packages/pkg/mod.py",
        "__pycache__/abc.py",
        "json/README.txt",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    found = [p.relative_to(tmp_path).as_posix() for p in bench.stdlib_sources(tmp_path)]
    assert found == ["abc.py", "json/__init__.py", "json/decoder.py", "zipfile.py"]
