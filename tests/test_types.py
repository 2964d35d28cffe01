"""Value types and the shared filter semantics."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lookalike import AddReport, ConfigurationError, Failure, Hit, Record, Schema
from lookalike.filters import matches, normalize_filter


def test_schema_always_has_path_first_and_round_trips() -> None:
    schema = Schema(dim=8, identity="m:v1", fields=("label", "camera", "label", "path"))
    assert schema.fields == ("path", "label", "camera")
    assert Schema.from_dict(schema.to_dict()) == schema
    assert Schema(dim=8, identity="m:v1").fields == ("path", "label")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 0}, "dim"),
        ({"dim": 2.0}, "dim"),
        ({"identity": ""}, "identity"),
        ({"metric": "l2"}, "cosine"),
        ({"fields": ("not valid",)}, "identifiers"),
        ({"fields": ("score",)}, "reserved"),
    ],
)
def test_schema_validation(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"dim": 8, "identity": "m:v1", **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        Schema(**args)


def test_record_and_hit() -> None:
    record = Record("a", np.ones(3, dtype=np.float32), {"path": "/x.jpg", "label": "cat"})
    assert record.path == "/x.jpg" and Record("b", np.ones(3, np.float32)).path is None
    assert "dim=3" in repr(record)
    hit = Hit.from_metadata("a", np.float32(0.5), {"path": "/x.jpg", "label": "cat"})
    assert hit.path == "/x.jpg" and dict(hit.metadata) == {"label": "cat"}
    assert type(hit.score) is float
    assert repr(hit) == "<Hit 'a' score=0.5000 path='/x.jpg'>"


def test_add_report() -> None:
    report = AddReport(added=["a", "b"], updated=["c"], unchanged=["d"], seconds=2.0)
    assert report.stored == 3 and report.ok
    assert str(report) == "added 2, updated 1, unchanged 1, failed 0 in 2.0s, 1.5 img/s"
    report.failed.append(Failure("/bad.jpg", "empty file"))
    assert not report.ok and "failed 1" in str(report)


def test_filter_semantics() -> None:
    fields = ("path", "label", "year", "ok")
    flt = normalize_filter({"label": ["cat", "dog"], "year": 2020}, fields)
    assert flt == {"label": ("cat", "dog"), "year": (2020,)}
    assert matches({"label": "dog", "year": 2020}, flt)
    assert not matches({"label": "dog", "year": 2021}, flt)
    assert not matches({"label": "dog"}, flt)  # a missing field never matches
    assert normalize_filter(None, fields) is None and normalize_filter({}, fields) is None
    # bool and int, str and number never match each other
    assert not matches({"ok": 1}, normalize_filter({"ok": True}, fields) or {})
    assert not matches({"year": "2020"}, normalize_filter({"year": 2020}, fields) or {})
    assert matches({"year": 2020.0}, normalize_filter({"year": 2020}, fields) or {})


@pytest.mark.parametrize(
    ("flt", "match"),
    [("label=cat", "mapping"), ({"color": "red"}, "declared"), ({"label": []}, "empty"),
     ({"label": None}, "must be str"), ({"label": [{"a": 1}]}, "must be str")],
)
def test_filter_errors(flt: Any, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        normalize_filter(flt, ("path", "label"))
