"""refluxo.core.sql: the SQL store written once; its drivers run its contract elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from refluxo.core.sql import standard_dialect
from tests.core.test_import_purity import ALLOWED_THIRD_PARTY


def test_the_sql_store_imports_no_database_driver() -> None:
    code = (
        "import sys, json; before = set(sys.modules); import refluxo.core.sql; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    loaded = {name.split(".")[0] for name in json.loads(out.stdout)}
    assert "sqlite3" not in loaded and "_sqlite3" not in loaded
    third_party = {m for m in loaded - set(sys.stdlib_module_names) if not m.startswith("_")}
    assert third_party - {"refluxo"} <= ALLOWED_THIRD_PARTY


def test_standard_statements_use_question_mark_placeholders_only() -> None:
    dialect = standard_dialect("Any", runs="runs")
    counts = {
        "insert": 7,
        "update": 8,
        "select_snapshot": 1,
        "select_version": 1,
        "archive": 4,
        "archived": 2,
        "due": 2,
    }
    for name, count in counts.items():
        sql = getattr(dialect, name)
        assert sql.count("?") == count, name
        assert "$" not in sql and "%s" not in sql and "?1" not in sql, name
    assert dialect.results == "runs_results"


def test_a_table_name_that_is_not_an_identifier_is_refused() -> None:
    with pytest.raises(ValueError, match="table name"):
        standard_dialect("Any", runs="runs; DROP TABLE x")
