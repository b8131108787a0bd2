"""The chart's README: its values table matches values.yaml, and Chart.yaml points at the project."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import values_table
from conftest import CHART_DIR, REPO


def test_values_table_is_current() -> None:
    assert values_table.rendered_readme() == values_table.README.read_text(), (
        "charts/orchestration-dedupe/README.md's values table is stale: run python3 tests/chart/values_table.py"
    )


def test_a_changed_description_makes_the_table_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: edit one `# --` comment and the generated README differs."""
    edited = tmp_path / "values.yaml"
    text = values_table.VALUES.read_text()
    marker = "# -- Install the pruner CronJob."
    assert marker in text
    edited.write_text(text.replace(marker, "# -- Install the pruner CronJob (edited)."))
    monkeypatch.setattr(values_table, "VALUES", edited)
    assert values_table.rendered_readme() != values_table.README.read_text()
    assert "Install the pruner CronJob (edited)." in values_table.table()


def test_every_value_has_a_row_and_documented_ones_a_description() -> None:
    values = yaml.safe_load(values_table.VALUES.read_text())
    docs = values_table.descriptions(values_table.VALUES.read_text())
    keys = {row[0] for row in values_table.rows(values, docs)}
    for top in values:
        assert any(k == top or k.startswith(f"{top}.") for k in keys), top
    for key in ("admission.hostNetwork", "admission.extraEnv", "admission.serviceAccount.create", "admission.podSecurityContext", "pruner.securityContext"):
        assert key in keys and docs.get(key), key


def test_chart_metadata_points_at_the_project() -> None:
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert meta["home"].startswith("https://")
    assert meta["sources"] and all(s.startswith("https://") for s in meta["sources"])
    assert meta["maintainers"] and all(m.get("name") for m in meta["maintainers"])
    assert "Apache License" in (REPO / "LICENSE").read_text()
    assert "## [Unreleased]" in (REPO / "CHANGELOG.md").read_text()
