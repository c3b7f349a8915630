"""The results table: our numbers next to the paper's, in markdown and JSON.

One row per (benchmark, split). `Ours` holds only numbers computed with the benchmark's official
or reference rule; server-scored splits say where their upload file is, and GPT-judged benchmarks
show their offline proxy in the separate `Offline proxy` column, never in `Ours`. When a row was
scored with `answer_parsing="lenient"` too, a `Lenient parsing` column shows that reading beside.

`update(out, row)` merges a row into the table at `out` (both `<out>.md` and `<out>.json` are
written; running several benchmarks with the same `--out` builds up one table).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from llava_mini_jax.eval.registry import BENCHMARKS, PAPER_MODEL

COLUMNS = ("Benchmark", "Split", "Metric", "Ours", f"Paper: {PAPER_MODEL}", "Offline proxy", "Note")
LENIENT_COLUMN = "Lenient parsing (not comparable with the paper)"


def table_paths(out: Path) -> Tuple[Path, Path]:
    """(markdown path, JSON path) for `--out`: `x.md`/`x.json` give both; other names get suffixes."""
    out = Path(out)
    base = out.with_suffix("") if out.suffix in (".md", ".json") else out
    return base.with_name(base.name + ".md"), base.with_name(base.name + ".json")


def _number(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.1f}"


def row_cells(row: Dict, lenient: bool = False) -> List[str]:
    """The markdown cells of one result row (with the lenient-parsing cell after `Ours`)."""
    cells = [
        row["title"],
        row["split"],
        row["metric"],
        _number(row.get("ours")),
        _number(row.get("paper")),
        _number(row.get("proxy")),
        row.get("note", ""),
    ]
    if lenient:
        cells.insert(4, _number(row.get("lenient")))
    return cells


def markdown(rows: Sequence[Dict]) -> str:
    """A markdown table of result rows."""
    lenient = any(row.get("lenient") is not None for row in rows)
    columns = list(COLUMNS)
    if lenient:
        columns.insert(4, LENIENT_COLUMN)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [c.replace("|", "\\|") for c in row_cells(row, lenient)]
        lines.append("| " + " | ".join(cells) + " |")
    notes = (
        "Ours: computed with the benchmark's official or reference scoring rule. "
        "Offline proxy: exact/contains match for GPT-judged benchmarks, NOT comparable "
        "with the paper."
    )
    return "\n".join(lines) + "\n\n" + notes + "\n"


def _order(row: Dict) -> Tuple[int, str]:
    names = list(BENCHMARKS)
    index = names.index(row["benchmark"]) if row["benchmark"] in names else len(names)
    return (index, row["split"])


def load(out: Path) -> List[Dict]:
    """The rows of the table at `out` (none when it does not exist yet). A markdown file there
    without its JSON twin is someone else's file: ValueError rather than overwriting it."""
    md_path, json_path = table_paths(out)
    if not json_path.exists():
        if md_path.exists():
            raise ValueError(f"--out {out}: {md_path} exists but is not a results table (no {json_path.name} "
                             f"beside it); choose another --out rather than overwrite it")
        return []
    data = json.loads(json_path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(f"{json_path}: expected a results table {{'rows': [...]}}")
    return data["rows"]


def update(out: Path, row: Dict) -> Tuple[Path, Path]:
    """Insert or replace `row` (same benchmark and split) and rewrite both files."""
    rows = [r for r in load(out) if (r["benchmark"], r["split"]) != (row["benchmark"], row["split"])]
    rows = sorted(rows + [row], key=_order)
    md_path, json_path = table_paths(out)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(
        json.dumps({"paper_model": PAPER_MODEL, "rows": rows}, indent=2, default=str) + "\n", encoding="utf-8"
    )
    md_path.write_text(markdown(rows), encoding="utf-8")
    return md_path, json_path
