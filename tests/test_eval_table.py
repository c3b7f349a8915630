"""Results table paths, cells and the markdown layout."""

from pathlib import Path

import pytest

from llava_mini_jax.eval import table


@pytest.mark.parametrize(
    "out, md, js",
    [("r.md", "r.md", "r.json"), ("r.json", "r.md", "r.json"), ("runs/r", "runs/r.md", "runs/r.json")],
)
def test_table_paths(out, md, js):
    assert table.table_paths(Path(out)) == (Path(md), Path(js))


def test_markdown_keeps_proxies_out_of_ours():
    rows = [
        {
            "benchmark": "gqa",
            "title": "GQA",
            "split": "testdev",
            "metric": "accuracy",
            "ours": 61.26,
            "paper": 61.3,
            "proxy": None,
            "note": "",
        },
        {
            "benchmark": "mmvet",
            "title": "MM-Vet",
            "split": "test",
            "metric": "proxy_contains",
            "ours": None,
            "paper": 37.2,
            "proxy": 12.34,
            "note": "GPT-judged | x",
        },
    ]
    lines = table.markdown(rows).splitlines()
    assert lines[0].startswith("| Benchmark | Split | Metric | Ours | Paper: ")
    assert lines[2] == "| GQA | testdev | accuracy | 61.3 | 61.3 | — |  |"
    assert lines[3] == "| MM-Vet | test | proxy_contains | — | 37.2 | 12.3 | GPT-judged \\| x |"
    assert "NOT comparable" in lines[-1]


def test_load_rejects_a_foreign_json(tmp_path):
    (tmp_path / "r.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="results table"):
        table.load(tmp_path / "r.md")


def test_a_foreign_markdown_file_is_never_overwritten(tmp_path):
    (tmp_path / "README.md").write_text("# my notes\n")
    with pytest.raises(ValueError, match=r"README.md exists but is not a results table \(no README.json"):
        table.update(tmp_path / "README.md", {"benchmark": "pope", "split": "test"})
    assert (tmp_path / "README.md").read_text() == "# my notes\n" and not (tmp_path / "README.json").exists()
