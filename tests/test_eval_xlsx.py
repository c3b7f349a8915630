"""The minimal .xlsx writer: column names and a sheet read back from the zip."""

import zipfile
import xml.etree.ElementTree as ET

import pytest

from llava_mini_jax.eval import xlsx

NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}


@pytest.mark.parametrize(
    "index, name", [(0, "A"), (6, "G"), (25, "Z"), (26, "AA"), (27, "AB"), (701, "ZZ"), (702, "AAA")]
)
def test_column_name(index, name):
    assert xlsx.column_name(index) == name


def test_write_reads_back(tmp_path):
    rows = [["index", "prediction"], [1, "A <b> & 'c'"], [2, None], [3.5, float("nan")]]
    path = xlsx.write(rows, tmp_path / "out.xlsx")
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        assert {
            "[Content_Types].xml",
            "_rels/.rels",
            "xl/workbook.xml",
            "xl/_rels/workbook.xml.rels",
            "xl/worksheets/sheet1.xml",
        } <= names
        sheet = ET.fromstring(z.read("xl/worksheets/sheet1.xml"))
    cells = {}
    for c in sheet.iterfind(".//m:c", NS):
        value = c.find("m:v", NS)
        text = c.find("m:is/m:t", NS)
        cells[c.get("r")] = value.text if value is not None else text.text
    assert cells == {
        "A1": "index",
        "B1": "prediction",
        "A2": "1",
        "B2": "A <b> & 'c'",
        "A3": "2",
        "A4": "3.5",
    }  # None and NaN cells are left empty
