"""The shared argument checks (``lookalike._checks``)."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike._checks import optional_import, positive_int, unit_rows
from lookalike.errors import ConfigurationError, MissingDependencyError


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(1)])
def test_positive_int_takes_whole_numbers_from_one(value: object) -> None:
    assert positive_int(value, "k") == int(value)  # type: ignore[call-overload]
    assert type(positive_int(value, "k")) is int


@pytest.mark.parametrize("value", [0, -1, True, False, np.bool_(True), 1.0, "3", None])
def test_positive_int_refuses_everything_else_naming_the_argument(value: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^k must be a positive int, got"):
        positive_int(value, "k")


def test_positive_int_optional_lets_none_through() -> None:
    assert positive_int(None, "streams", optional=True) is None
    with pytest.raises(ConfigurationError, match="streams must be a positive int or None, got 0"):
        positive_int(0, "streams", optional=True)


def test_unit_rows_scales_each_row_to_length_one() -> None:
    out = unit_rows(np.array([[3, 4], [0, 2]], dtype=np.float32), "vectors")
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 1.0]])
    assert out.dtype == np.float32


@pytest.mark.parametrize(
    ("row", "match"), [([0.0, 0.0], "all-zero"), ([np.nan, 1.0], "NaN"), ([np.inf, 1.0], "infinite")]
)
def test_unit_rows_refuses_rows_without_a_direction(row: list[float], match: str) -> None:
    with pytest.raises(ConfigurationError, match=f"the query vectors contain .*{match}"):
        unit_rows(np.array([[1.0, 0.0], row], dtype=np.float32), "the query vectors")


def test_optional_import_names_every_extra() -> None:
    assert optional_import("json", extra="torch", feature="x").dumps([]) == "[]"
    with pytest.raises(MissingDependencyError) as info:
        optional_import("no_such_module_zz.sub", extra="onnx", feature="OnnxEmbedder(x)", also=("offline",))
    assert info.value.package == "no_such_module_zz"
    assert "pip install 'lookalike[onnx,offline]'" in str(info.value)
