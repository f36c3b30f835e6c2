"""Reading, splitting, packing and ordering training data."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from codex_trainer.batches import collate, label_tokens, micro_batch_rows, row_tokens
from codex_trainer.data import (
    data_digest,
    load_dataset,
    micro_batches_per_epoch,
    no_validation_reason,
    pack,
    read_texts,
    split_indices,
    truncate,
    truncation_warning,
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
        ([str(tmp_path / "d.xyz")], "text", "spec.data.train", "unsupported extension"),
    ]
    for files, field, path, words in cases:
        with pytest.raises(SpecError) as e:
            read_texts(files, field, "spec.data.train")
        ((got_path, msg),) = e.value.problems
        assert got_path == path and words in msg, (got_path, msg)


def test_a_file_whose_rows_all_have_empty_text_is_not_called_empty(tmp_path):
    blank = tmp_path / "blank.jsonl"
    blank.write_text((json.dumps({"text": ""}) + "\n") * 3)
    with pytest.raises(SpecError) as e:
        read_texts([str(blank)], "text", "spec.data.train")
    assert e.value.problems == [
        ("spec.data.train", f"'{blank}' has no examples with text: 'text' is empty in all 3 rows; give them text")
    ]


def test_every_bad_data_file_is_named_not_only_the_first(tmp_path, jsonl):
    missing, folder, missing_val = tmp_path / "a.jsonl", tmp_path / "dir.jsonl", tmp_path / "v.jsonl"
    folder.mkdir()
    spec = DataSpec(train=[str(missing), str(jsonl), str(folder)], validation=[str(missing_val)])
    tok = byte_tokenizer()
    with pytest.raises(SpecError) as e:
        load_dataset(spec, tok, tokenizer_fingerprint(tok), 0, None)
    assert [(field, msg.split("'")[1]) for field, msg in e.value.problems] == [
        ("spec.data.train", str(missing)),
        ("spec.data.train", str(folder)),
        ("spec.data.validation", str(missing_val)),
    ]


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


def test_packed_rows_restart_positions_at_each_document_and_never_predict_across_one():
    docs = [np.array([1, 2, 0], np.int32), np.array([3, 4, 5, 6, 0], np.int32), np.array([7, 0], np.int32)]
    packed = pack(docs, 4)
    batch = collate(packed, np.array([0, 1]), pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 0, 3], [4, 5, 6, 0]]
    # the second document starts at index 3 of row 0 and goes on in row 1, which starts counting again
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0], [0, 1, 2, 3]]
    assert batch["labels"].tolist() == [[-100, 2, 0, -100], [-100, 5, 6, 0]]
    assert "attention_mask" not in batch  # transformers derives the block-diagonal mask from the positions
    assert batch["document_segments"] == (((0, 3), (3, 4)), ((0, 4),))  # for attention.document_attention
    assert row_tokens(packed, np.array([0, 1])) == 8
    assert label_tokens(packed, np.array([0, 1])) == int((batch["labels"][:, 1:] != -100).sum()) == 5


def test_collate_pads_and_masks_labels():
    split = truncate([np.array([5, 6, 7], np.int32), np.array([8], np.int32)], 8)
    batch = collate(split, np.array([0, 1]), pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    assert row_tokens(split, np.array([0, 1])) == 4
    assert label_tokens(split, np.array([0, 1])) == int((batch["labels"][:, 1:] != -100).sum()) == 2


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


def test_examples_cut_to_max_seq_length_without_packing_are_counted_and_said_even_from_the_cache(tmp_path):
    """data.packing false cuts each example to maxSeqLength: the run says how much it never trains on (it
    said nothing before), and how much of the validation examples is cut; packed, nothing is cut."""
    path, held_out = tmp_path / "d.jsonl", tmp_path / "v.jsonl"
    texts = ["short"] * 6 + ["x" * 30] * 3 + ["y" * 99]  # 6, 31 and 100 tokens with their EOS
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    held_out.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["z" * 15, "z" * 16, "v"]))  # 16, 17, 2
    tok = byte_tokenizer()
    spec = DataSpec(train=[str(path)], validation=[str(held_out)], max_seq_length=16, packing=False)
    for cached in (False, True):
        data = load_dataset(spec, tok, tokenizer_fingerprint(tok), 0, tmp_path / "cache")
        assert data.from_cache is cached and data.cut == (4, 3 * 15 + 84, 6 * 6 + 3 * 31 + 100, 1, 1, 35)
        assert truncation_warning(spec, data) == (
            "4 training examples of 10 (40%) are longer than data.maxSeqLength 16 with their end-of-text token "
            "and are cut to it (data.packing is false): 129 tokens (56% of the training tokens) are never trained "
            "on; 1 of 3 validation examples are cut too (3% of their tokens), and evaluated cut; raise "
            "maxSeqLength, or set data.packing: true (a long example then continues in the next sequences)"
        )
    packed = load_dataset(spec.model_copy(update={"packing": True}), tok, tokenizer_fingerprint(tok), 0, None)
    assert packed.cut == (0,) * 6 and truncation_warning(spec, packed) is None
    fits = load_dataset(spec.model_copy(update={"max_seq_length": 100}), tok, tokenizer_fingerprint(tok), 0, None)
    assert truncation_warning(spec, fits) is None


def test_the_tokens_digest_follows_what_the_tokenizer_makes_of_the_data(tmp_path, jsonl):
    """runinfo's `tokens`: the same data and tokenizer make the same digest, from the cache too; a tokenizer
    that encodes differently makes another."""
    tok = byte_tokenizer()
    spec = DataSpec(train=[str(jsonl)], max_seq_length=16, validation_fraction=0.1)
    first = load_dataset(spec, tok, tokenizer_fingerprint(tok), 0, tmp_path / "cache")
    again = load_dataset(spec, tok, tokenizer_fingerprint(tok), 0, tmp_path / "cache")
    assert again.from_cache and again.tokens_sha256 == first.tokens_sha256 and len(first.tokens_sha256) == 64
    other = byte_tokenizer()
    other.eos_token = other.convert_ids_to_tokens(other.pad_token_id)  # each document ends in another token
    assert load_dataset(spec, other, "other", 0, None).tokens_sha256 != first.tokens_sha256


@pytest.mark.parametrize("spelling", ["dot", "double slash", "absolute", "symlink", "hard link"])
def test_a_validation_file_that_is_a_training_file_under_another_name_is_refused(
    tmp_path, jsonl, monkeypatch, spelling
):
    """The manifest's check (and the API server's) compares the names; here the files themselves are at hand."""
    monkeypatch.chdir(tmp_path)
    if spelling == "symlink":
        (tmp_path / "link.jsonl").symlink_to(jsonl)
    if spelling == "hard link":
        (tmp_path / "hard.jsonl").hardlink_to(jsonl)
    other = {
        "dot": "./d.jsonl",
        "double slash": f"{tmp_path}//d.jsonl",
        "absolute": str(jsonl),
        "symlink": "link.jsonl",
        "hard link": "hard.jsonl",
    }[spelling]
    spec = DataSpec(train=["d.jsonl"], validation=[other], max_seq_length=16)
    with pytest.raises(SpecError) as e:
        load_dataset(spec, byte_tokenizer(), "fp", seed=0, cache_dir=None)
    assert [f for f, _ in e.value.problems] == ["spec.data.validation"]
    assert f"'{other}' is the training file 'd.jsonl' under another name" in str(e.value)


def test_a_file_listed_twice_is_warned_of_under_one_name_or_two(tmp_path, jsonl, monkeypatch):
    """Its held-out rows are trained on through its twin, and its rows twice: said, not refused (jobs and runs
    made before must still load)."""
    monkeypatch.chdir(tmp_path)
    said: list[str] = []
    for twin in ("d.jsonl", "./d.jsonl"):
        spec = DataSpec(train=["d.jsonl", twin], max_seq_length=16)
        load_dataset(spec, byte_tokenizer(), "fp", seed=0, cache_dir=None, log=said.append)
    assert said == [
        "spec.data.train: 'd.jsonl' is listed twice: its rows are trained on twice, and those held out of it for "
        "validation are trained on too; list each file once",
        "spec.data.train: './d.jsonl' (as 'd.jsonl') is listed twice: its rows are trained on twice, and those held "
        "out of it for validation are trained on too; list each file once",
    ]


def test_lora_with_every_target_trained_in_full_is_refused_and_a_partial_overlap_is_peft_s():
    from codex_trainer.spec import PeftSpec

    with pytest.raises(ValueError, match="every module in targetModules is also in modulesToSave"):
        PeftSpec(target_modules=["lm_head"], modules_to_save=["embed_tokens", "lm_head"])
    shared = PeftSpec(target_modules=["q_proj", "lm_head"], modules_to_save=["lm_head"])  # lm_head trained in full
    assert shared.modules_to_save == ["lm_head"]
    assert PeftSpec(target_modules=["all-linear"], modules_to_save=["lm_head"]).modules_to_save == ["lm_head"]
    assert PeftSpec(method="none", target_modules=["lm_head"], modules_to_save=["lm_head"]).method == "none"


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


# ---------------------------------------------------------------- rows the user must fix: field, file and line

BAD_ROWS = {
    "null text": (b'{"text": "ok"}\n{"text": null}\n', "d.jsonl", "line 2: field 'text' is null, not a string"),
    "number text": (b'{"text": 12345}\n', "d.jsonl", "line 1: field 'text' is int 12345, not a string"),
    "boolean text": (b'{"text": "a"}\n\n{"text": false}\n', "d.jsonl", "line 3: field 'text' is bool false"),
    "lone surrogate": (b'{"text": "a \\ud800 b"}\n', "d.jsonl", "line 1: field 'text' holds a lone surrogate"),
    "jsonl not UTF-8": (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "d.jsonl", "byte 0xe9 at offset 28 (line 2)"),
    "txt not UTF-8": (b"fine\n\xff\xfeoops\n", "d.txt", "not UTF-8 text: byte 0xff at offset 5 (line 2)"),
    "json item null": (b'[{"text": "a"}, {"text": null}]', "d.json", "item 2 (index 1): field 'text' is null"),
    "JSON Lines named .json": (
        b'{"text": "a"}\n{"text": "b"}\n',
        "d.json",
        "is not JSON: Extra data (line 2, column 1); it holds one JSON object per line: name it .jsonl",
    ),
    "not JSON": (
        b'{"text": "a"}\n{text}\n',
        "d.jsonl",
        "line 2 is not JSON: Expecting property name enclosed in double quotes (column 2)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS), ids=list(BAD_ROWS))
def test_a_bad_row_is_refused_naming_file_line_and_field(tmp_path, case):
    content, name, words = BAD_ROWS[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SpecError) as e:
        read_texts([str(path)], "text", "spec.data.train")
    ((field, msg),) = e.value.problems
    assert field == "spec.data.train" and str(path) in msg and words in msg, msg


def test_a_row_missing_the_text_field_gives_its_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(SpecError) as e:
        read_texts([str(path)], "text", "spec.data.train")
    ((field, msg),) = e.value.problems
    assert field == "spec.data.textField" and f"'{path}' line 2" in msg and "fields there: body" in msg
    assert msg.endswith(
        "name the field that holds the text in every row (data.textField; --text-field for codex-train eval), "
        "or give that row 'text'"
    )


def test_a_parquet_column_that_is_not_strings_is_refused(tmp_path):
    ints, nulls = tmp_path / "ints.parquet", tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), ints)
    pq.write_table(pa.table({"text": ["a", None]}), nulls)
    for path, words in ((ints, "holds int64, not strings"), (nulls, "row 2 (index 1): column 'text' is null")):
        with pytest.raises(SpecError) as e:
            read_texts([str(path)], "text", "spec.data.train")
        assert words in e.value.problems[0][1], e.value.problems


def test_a_parquet_file_without_the_text_column_names_its_columns(tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"body": ["x = 1"]}), path)
    with pytest.raises(SpecError) as e:
        read_texts([str(path)], "text", "spec.data.train")
    assert e.value.problems == [
        (
            "spec.data.textField",
            f"'text' is not a field of '{path}' (fields there: body); name the field that holds the text "
            "(data.textField; --text-field for codex-train eval)",
        )
    ]


def test_a_parquet_text_column_stored_as_categories_reads_as_its_strings(tmp_path):
    path = tmp_path / "categorical.parquet"  # what pandas writes for a categorical column
    pq.write_table(pa.table({"text": pa.array(["def f(): pass", "x = 1", "def f(): pass"]).dictionary_encode()}), path)
    assert read_texts([str(path)], "text", "spec.data.train") == ["def f(): pass", "x = 1", "def f(): pass"]


@pytest.mark.parametrize("name", ["data.jsonl", "data"])  # with a data file's extension, or none
def test_a_directory_is_not_a_data_file(tmp_path, name):
    (tmp_path / name).mkdir()
    with pytest.raises(SpecError) as e:
        read_texts([str(tmp_path / name)], "text", "spec.data.validation")
    assert e.value.problems == [
        ("spec.data.validation", f"'{tmp_path / name}' is a directory; name the data files in it")
    ]


def test_a_pipe_is_not_a_data_file_and_says_so_not_that_it_is_missing(tmp_path):
    os.mkfifo(tmp_path / "data.jsonl")  # what <(...) gives
    name = str(tmp_path / "data.jsonl")
    with pytest.raises(SpecError) as e:
        read_texts([name], "text", "spec.data.train")
    assert e.value.problems == [
        ("spec.data.train", f"'{name}' is not a regular file (a pipe or a device); save its contents to a file")
    ]


def test_a_run_checks_its_data_files_first_and_says_the_same_of_a_pipe(tmp_path):
    import yaml

    from codex_trainer.launch import check_data_files
    from codex_trainer.manifest import apply_overrides, parse_manifest
    from support import TINY

    os.mkfifo(tmp_path / "data.jsonl")
    name = str(tmp_path / "data.jsonl")
    spec = parse_manifest(apply_overrides(yaml.safe_load(TINY.read_text()), [f"data.train=[{name}]"])).spec
    with pytest.raises(SpecError) as e:
        check_data_files(spec)
    assert e.value.problems == [
        ("spec.data.train", f"'{name}' is not a regular file (a pipe or a device); save its contents to a file")
    ]


def test_a_missing_file_of_a_job_with_a_data_claim_says_it_was_looked_for_there_or_where_its_files_are(in_root):
    import yaml

    from codex_trainer.launch import check_data_files
    from codex_trainer.manifest import apply_overrides, parse_manifest
    from support import TINY

    sets = ["data.existingClaim=corpus", "data.train=[/data/nope.jsonl]", "data.validation=[nope.jsonl]"]
    spec = parse_manifest(apply_overrides(yaml.safe_load(TINY.read_text()), sets)).spec
    with pytest.raises(SpecError) as e:
        check_data_files(spec)
    assert e.value.problems == [
        (
            "spec.data.train",
            "file '/data/nope.jsonl' not found on data.existingClaim 'corpus' (mounted read-only at /data/)",
        ),
        (
            "spec.data.validation",
            f"file 'nope.jsonl' not found (relative paths are read from {in_root}); "
            "the files of data.existingClaim 'corpus' are under /data/",
        ),
    ]


def test_unicode_line_separators_inside_json_strings_stay_in_the_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a\u2028b\x0cc"}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert read_texts([str(path)], "text", "spec.data.train") == ["a\u2028b\x0cc"]


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.txt"])
def test_a_file_saved_with_a_byte_order_mark_reads_as_without_one(tmp_path, name):
    """Windows editors often start UTF-8 files with a BOM: it is not part of the first example."""
    body = {"d.jsonl": '{"text": "first"}\n{"text": "second"}\n', "d.json": '[{"text": "first"}, {"text": "second"}]',
            "d.txt": "first\nsecond\n"}[name]  # fmt: skip
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    texts = read_texts([str(path)], "text", "spec.data.train")
    assert texts[0].startswith("first") and "\ufeff" not in "".join(texts)


# ---------------------------------------------------------------- identity, cache, splits


def test_the_data_digest_is_the_content_not_the_path(tmp_path, jsonl, monkeypatch):
    monkeypatch.chdir(tmp_path)
    absolute = DataSpec(train=[str(jsonl)])
    relative = DataSpec(train=[jsonl.name])
    assert data_digest(absolute) == data_digest(relative)
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(jsonl.read_bytes())  # the same rows again, as validation: part of what the data is
    assert data_digest(absolute) != data_digest(DataSpec(train=[str(jsonl)], validation=[str(copy)]))
    before = data_digest(absolute)
    jsonl.write_text(json.dumps({"text": "other rows"}) + "\n")
    assert data_digest(absolute) != before


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "garbage"])
def test_a_damaged_cache_is_reported_and_rebuilt(tmp_path, jsonl, damage):
    tok = byte_tokenizer()
    fp = tokenizer_fingerprint(tok)
    spec = DataSpec(train=[str(jsonl)], max_seq_length=16, validation_fraction=0.1)
    first = load_dataset(spec, tok, fp, seed=0, cache_dir=tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache").iterdir()
    raw = cache_file.read_bytes()
    if damage == "truncate":
        cache_file.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip a byte":
        i = raw.index(b"train_tokens") + 200  # inside the array data: the zip's CRC catches it
        cache_file.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1 :])
    else:
        cache_file.write_bytes(b"not a zip at all")
    logged = []
    again = load_dataset(spec, tok, fp, seed=0, cache_dir=tmp_path / "cache", log=logged.append)
    assert not again.from_cache and np.array_equal(again.train.tokens, first.train.tokens)
    assert len(logged) == 1 and "ignoring damaged tokenized cache" in logged[0], logged
    assert load_dataset(spec, tok, fp, seed=0, cache_dir=tmp_path / "cache").from_cache  # rebuilt and good


def test_a_full_disk_while_caching_says_so_and_leaves_no_temporary_file(tmp_path, jsonl, monkeypatch):
    import errno

    from codex_trainer import data as data_module
    from codex_trainer.errors import DiskFullError

    def no_space(file, **arrays):
        with open(file, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data_module.np, "savez", no_space)
    tok = byte_tokenizer()
    spec = DataSpec(train=[str(jsonl)], max_seq_length=16)
    with pytest.raises(DiskFullError) as e:
        load_dataset(spec, tok, tokenizer_fingerprint(tok), seed=0, cache_dir=tmp_path / "cache")
    assert str(e.value).startswith(f"disk full: writing the tokenized data cache in {tmp_path / 'cache'} needed about")
    assert "MiB free" in str(e.value)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_validation_fraction_that_leaves_no_training_sequence_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": "x" * 30}) + "\n" for _ in range(10)))
    spec = DataSpec(train=[str(path)], max_seq_length=64, validation_fraction=0.9)
    tok = byte_tokenizer()
    with pytest.raises(SpecError) as e:
        load_dataset(spec, tok, tokenizer_fingerprint(tok), 0, None)
    ((field, msg),) = e.value.problems
    assert field == "spec.data.validationFraction" and "holds out 9 examples" in msg, msg


def test_an_empty_validation_split_is_explained(tmp_path, jsonl):
    tok = byte_tokenizer()
    spec = DataSpec(train=[str(jsonl)], max_seq_length=64, validation_fraction=0.01)
    data = load_dataset(spec, tok, tokenizer_fingerprint(tok), 0, None)
    assert data.validation.rows == 0
    assert "validationFraction 0.01 holds out 1 example, too few for one sequence" in no_validation_reason(spec, data)
    none = spec.model_copy(update={"validation_fraction": 0.0})
    assert "validationFraction is 0" in no_validation_reason(none, load_dataset(none, tok, "fp", 0, None))


# ---------------------------------------------------------------- what the settings make of the data


def test_a_step_bigger_than_the_epochs_asked_for_and_a_warmup_that_never_ends_are_said():
    from codex_trainer.batches import planned_steps, schedule_warnings
    from codex_trainer.spec import TrainingSpec

    big = TrainingSpec(batch_size=2, gradient_accumulation=100)  # 200 sequences a step, 63 in the data
    assert planned_steps(big, 63, 1) == 1
    (line,) = schedule_warnings(big, 63, 1)
    assert "= 200 sequences and the training data makes 63: the run's 1 optimizer step(s) cover 3.2 epochs" in line
    assert "not training.epochs 1; lower training.gradientAccumulation" in line

    short = TrainingSpec(batch_size=2, epochs=0.5, warmup_steps=100, learning_rate=3e-3)
    assert planned_steps(short, 63, 1) == 16
    (line,) = schedule_warnings(short, 63, 1)
    assert line.startswith("training.warmupSteps 100 is not less than the run's 16 steps: the rate never reaches")
    assert "(its last step trains at 0.00045)" in line

    assert schedule_warnings(TrainingSpec(batch_size=2, warmup_steps=5), 63, 1) == []
    assert schedule_warnings(TrainingSpec(batch_size=2, gradient_accumulation=100, max_steps=3), 63, 1) == []
