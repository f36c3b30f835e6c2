"""Reading, splitting, packing and ordering training data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codex_trainer.data import (
    collate,
    load_dataset,
    micro_batch_rows,
    micro_batches_per_epoch,
    pack,
    read_texts,
    split_indices,
    truncate,
)
from codex_trainer.errors import SpecError
from codex_trainer.spec import DataSpec
from codex_trainer.tokenizer import byte_tokenizer, tokenizer_fingerprint


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"example number {i}", "id": i}) + "\n" for i in range(40)))
    return path


def test_reads_jsonl_txt_json_and_parquet(tmp_path, jsonl):
    txt = tmp_path / "d.txt"
    txt.write_text("first line\n\nsecond line\n")
    js = tmp_path / "d.json"
    js.write_text(json.dumps([{"body": "a"}, {"body": "b"}]))
    pq_path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": ["x", "y", "z"]}), pq_path)

    assert len(read_texts([str(jsonl)], "text", "spec.data.train")) == 40
    assert read_texts([str(txt)], "text", "spec.data.train") == ["first line", "second line"]
    assert read_texts([str(js)], "body", "spec.data.train") == ["a", "b"]
    assert read_texts([str(pq_path)], "body", "spec.data.train") == ["x", "y", "z"]


def test_file_problems_name_the_field_and_the_fix(tmp_path, jsonl):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases = [
        ([str(tmp_path / "missing.jsonl")], "text", "spec.data.train", "not found"),
        ([str(empty)], "text", "spec.data.train", "empty"),
        ([str(jsonl)], "content", "spec.data.textField", "fields there: text, id"),
        ([str(tmp_path / "d.csv")], "text", "spec.data.train", "unsupported extension"),
    ]
    for files, field, path, words in cases:
        with pytest.raises(SpecError) as e:
            read_texts(files, field, "spec.data.train")
        ((got_path, msg),) = e.value.problems
        assert got_path == path and words in msg, (got_path, msg)


def test_split_is_fixed_for_a_seed_disjoint_and_complete():
    tr, va = split_indices(100, 0.1, seed=7)
    tr2, va2 = split_indices(100, 0.1, seed=7)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert len(va) == 10 and not set(tr) & set(va) and len(tr) + len(va) == 100
    assert not np.array_equal(va, split_indices(100, 0.1, seed=8)[1])
    assert len(split_indices(100, 0.0, seed=7)[1]) == 0


def test_packing_fills_every_sequence_and_keeps_document_boundaries():
    docs = [np.array([1, 2, 0], np.int32), np.array([3, 4, 5, 6, 0], np.int32), np.array([7, 0], np.int32)]
    packed = pack(docs, 4)
    assert packed.rows == 2
    assert packed.row(0).tolist() == [1, 2, 0, 3] and packed.row(1).tolist() == [4, 5, 6, 0]
    unpacked = truncate(docs, 4)
    assert [unpacked.row(i).tolist() for i in range(3)] == [[1, 2, 0], [3, 4, 5, 6], [7, 0]]


def test_collate_pads_and_masks_labels():
    split = truncate([np.array([5, 6, 7], np.int32), np.array([8], np.int32)], 8)
    batch = collate(split, np.array([0, 1]), pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]


def test_each_epoch_visits_every_row_once_in_a_new_order():
    rows, per_rank, world = 24, 3, 2
    per_epoch = micro_batches_per_epoch(rows, per_rank, world)
    assert per_epoch == 4
    epochs = []
    for epoch in range(2):
        seen = [
            micro_batch_rows(rows, per_rank, world, rank, seed=1, index=epoch * per_epoch + k)
            for k in range(per_epoch)
            for rank in range(world)
        ]
        flat = np.concatenate(seen)
        assert sorted(flat.tolist()) == list(range(rows))  # each row once, ranks disjoint
        epochs.append(flat)
    assert not np.array_equal(epochs[0], epochs[1])


def test_two_ranks_see_the_rows_one_process_would():
    """Same global batch for any process count: what makes multi-process runs comparable."""
    one = micro_batch_rows(32, 8, 1, 0, seed=3, index=2)
    two = np.concatenate([micro_batch_rows(32, 4, 2, r, seed=3, index=2) for r in range(2)])
    assert np.array_equal(one, two)


def test_tokenized_data_is_cached_and_the_cache_follows_the_data(tmp_path, jsonl):
    tok = byte_tokenizer()
    fp = tokenizer_fingerprint(tok)
    spec = DataSpec(train=[str(jsonl)], max_seq_length=16, validation_fraction=0.1)
    first = load_dataset(spec, tok, fp, seed=0, cache_dir=tmp_path / "cache")
    again = load_dataset(spec, tok, fp, seed=0, cache_dir=tmp_path / "cache")
    assert not first.from_cache and again.from_cache
    assert np.array_equal(first.train.tokens, again.train.tokens)
    assert first.validation.rows > 0

    jsonl.write_text(jsonl.read_text() + json.dumps({"text": "one more example"}) + "\n")
    changed = load_dataset(spec, tok, fp, seed=0, cache_dir=tmp_path / "cache")
    assert not changed.from_cache
    other_len = load_dataset(spec.model_copy(update={"max_seq_length": 8}), tok, fp, 0, tmp_path / "cache")
    assert not other_len.from_cache and other_len.train.row(0).shape == (8,)


def test_too_little_data_for_one_sequence_names_max_seq_length(tmp_path):
    path = tmp_path / "short.jsonl"
    path.write_text(json.dumps({"text": "hi"}) + "\n")
    spec = DataSpec(train=[str(path)], max_seq_length=512, validation_fraction=0)
    tok = byte_tokenizer()
    with pytest.raises(SpecError) as e:
        load_dataset(spec, tok, tokenizer_fingerprint(tok), 0, None)
    assert e.value.problems[0][0] == "spec.data.maxSeqLength"


def test_byte_tokenizer_round_trips_any_text():
    tok = byte_tokenizer()
    text = "def f(x):\n    return x  # ünïcode ✓"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode())
    assert tok.decode(ids) == text
    assert tok.eos_token_id is not None and tok.pad_token_id != tok.eos_token_id
