"""File helpers: errors that name the file and line, video lookup with extensions/prefixes."""

import pytest

from llava_mini_jax.eval import files


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"a": 1}\n\n{oops\n')
    with pytest.raises(ValueError, match="line 3 of .*q.jsonl"):
        files.read_jsonl(path, "questions")


def test_missing_files_and_keys_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="questions: expected a file at .*x.json"):
        files.read_json(tmp_path / "x.json", "questions")
    with pytest.raises(ValueError, match=r"missing key\(s\) \['text'\]"):
        files.require_keys({"image": "a"}, ("image", "text"), "q.jsonl, line 1")
    with pytest.raises(FileNotFoundError, match="none of these exist"):
        files.first_existing([tmp_path / "a", tmp_path / "b"], "video folder")


def test_read_tsv_handles_huge_cells(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("index\timage\n1\t" + "x" * 300_000 + "\n")
    [row] = files.read_tsv(path, "tsv")
    assert row["index"] == "1" and len(row["image"]) == 300_000


def test_find_video_tries_extensions_and_prefixes(tmp_path):
    (tmp_path / "v_abc.mkv").write_bytes(b"")
    (tmp_path / "plain.mp4").write_bytes(b"")
    assert files.find_video(tmp_path, "plain.mp4") == tmp_path / "plain.mp4"
    assert files.find_video(tmp_path, "plain") == tmp_path / "plain.mp4"
    assert files.find_video(tmp_path, "abc") is None
    assert files.find_video(tmp_path, "abc", ("", "v_")) == tmp_path / "v_abc.mkv"
