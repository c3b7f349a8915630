"""Tests for llava_mini_jax.data.records: reading LLaVA json/jsonl, checks, the record table."""

import json
import pickle

import numpy as np
import pytest

from llava_mini_jax.data import records as R


def turns(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


RECORDS = [
    {"id": "a", "image": "x.png", "conversations": turns("<image>\nWhat?", "A cat.")},
    {"id": 7, "video": "v.mp4", "conversations": turns("<video>\nWhat?", "Run")},
    {"id": "t", "conversations": turns("Hi there", "Hello you all")},
    {"image": "both.png", "video": "v.mp4", "conversations": turns("<image>", "x")},
]


def test_read_json_and_jsonl(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps(RECORDS))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    assert R.read_llava_json(tmp_path / "d.json") == RECORDS
    assert R.read_llava_json(tmp_path / "d.jsonl") == RECORDS


def test_read_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        R.read_llava_json(tmp_path / "nope.json")
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        R.read_llava_json(tmp_path / "bad.jsonl")
    (tmp_path / "obj.json").write_text('{"id": 1}')
    with pytest.raises(ValueError, match="expected a JSON list of records, got dict"):
        R.read_llava_json(tmp_path / "obj.json")
    (tmp_path / "num.json").write_text('[{"id": 1}, 3]')
    with pytest.raises(ValueError, match="record 1 is a int"):
        R.read_llava_json(tmp_path / "num.json")


def test_kind_id_words():
    assert [R.record_kind(r) for r in RECORDS] == ["image", "video", "text", "image"]
    assert [R.sample_id(r, i) for i, r in enumerate(RECORDS)] == ["a", "7", "t", "#3"]
    assert [R.word_count(r) for r in RECORDS] == [4, 3, 5, 2]


@pytest.mark.parametrize("record, message", [
    ({"id": "x"}, "'conversations' must be a non-empty list"),
    ({"id": "x", "conversations": []}, "'conversations' must be a non-empty list"),
    ({"id": "x", "conversations": ["hi"]}, "turn 0 is not an object"),
    ({"id": "x", "conversations": [{"from": "human", "value": "q"},
                                   {"from": "human", "value": "q"}]}, "turn 1: from 'human'"),
    ({"id": "x", "conversations": [{"from": "system", "value": "q"}]}, "unknown 'from'"),
    ({"id": "x", "conversations": [{"from": "gpt", "value": "q"}]}, "no turn left"),
    ({"id": "x", "conversations": turns(" ", "")}, "no words"),
    ({"id": "x", "image": "", "conversations": turns("q", "a")}, "'image' must be a non-empty"),
    ({"id": "x", "video": 3, "conversations": turns("q", "a")}, "'video' must be a non-empty"),
])
def test_check_record_rejects(record, message):
    with pytest.raises(R.BadSampleError, match=message) as info:
        R.check_record(record, 0)
    assert info.value.reason == "bad_record" and info.value.sample_id == "x"


def test_check_record_accepts_good_ones():
    for i, r in enumerate(RECORDS):
        R.check_record(r, i)
    R.check_record({"conversations": [{"from": "gpt", "value": "dropped"}] + turns("q", "a")}, 0)


def test_load_records_skips_or_raises(tmp_path, caplog):
    bad = {"id": "bad", "conversations": turns("q", "a") + turns("x", "y")[1:]}
    (tmp_path / "a.json").write_text(json.dumps(RECORDS[:2] + [bad]))
    (tmp_path / "b.jsonl").write_text(json.dumps(RECORDS[2]))
    good, counts = R.load_records([tmp_path / "a.json", tmp_path / "b.jsonl"])
    assert [r.get("id") for r in good] == ["a", 7, "t"]
    assert counts == {"bad_record": 1}
    assert "skipping record 2 of" in caplog.text and "'bad'" in caplog.text
    with pytest.raises(R.BadSampleError, match="sample 'bad'"):
        R.load_records([tmp_path / "a.json"], on_bad_sample="raise")


def test_record_table_round_trip_and_pickle():
    records = RECORDS + [{"id": "u", "conversations": turns("日本語 😀", "ok")}]
    table = R.RecordTable(records)
    assert len(table) == 5
    assert [table[i] for i in range(5)] == records
    assert table.kinds.tolist() == [R.KIND_CODES[k] for k in ("image", "video", "text", "image",
                                                             "text")]
    assert table.words.tolist() == [4, 3, 5, 2, 3]
    assert table.ids == ["a", "7", "t", "#3", "u"]
    clone = pickle.loads(pickle.dumps(table))
    assert clone[4] == records[4]
    assert isinstance(clone.blob, np.ndarray)


def test_bad_sample_error_pickles():
    """It must cross from a grain worker process to the host intact."""
    err = pickle.loads(pickle.dumps(R.BadSampleError("too_long", "x7", "300 tokens")))
    assert (err.reason, err.sample_id, err.message) == ("too_long", "x7", "300 tokens")
    assert str(err) == "sample 'x7': 300 tokens"
