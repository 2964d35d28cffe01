"""The store contract's schema tests (a mixin of :class:`VectorStoreContract`)."""

from __future__ import annotations

import re

import pytest

from ...errors import ConfigurationError, SchemaMismatchError
from ...protocols import VectorStore
from ...types import Schema
from ._kit import (
    BEFORE_SCHEMA,
    DIM,
    FIELDS,
    SCHEMA,
    expect_error,
    make_records,
)


class SchemaTests:
    """The schema: create, describe, mismatch; calls before a schema exists; close()."""

    # -- schema ----------------------------------------------------------------------------------
    def test_describe_is_none_before_create_schema(self, store: VectorStore) -> None:
        assert store.describe() is None, (
            "describe() of a fresh store must be None (no schema yet); the `store` fixture must "
            "return an empty store"
        )
        assert store.count() == 0, "count() of a fresh store must be 0"

    def test_create_schema_is_described(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        described = store.describe()
        assert described == SCHEMA, f"describe() must return the schema created ({SCHEMA!r}), got {described!r}"
        assert described is not None and "path" in described.fields

    def test_create_schema_twice_is_a_no_op(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        store.upsert(make_records(3))
        store.create_schema(Schema(dim=DIM, identity="contract-test:v1", fields=FIELDS))
        assert store.describe() == SCHEMA, "create_schema() with an equal schema must change nothing"
        assert store.count() == 3, "create_schema() with an equal schema must keep the records"

    @pytest.mark.parametrize(
        ("other", "named"),
        [
            (Schema(dim=DIM + 1, identity="contract-test:v1", fields=FIELDS), str(DIM + 1)),
            (Schema(dim=DIM, identity="another-model:v2", fields=FIELDS), "another-model:v2"),
            (Schema(dim=DIM, identity="contract-test:v1", fields=("path", "label")), "colour"),
        ],
        ids=["dim", "identity", "fields"],
    )
    def test_create_schema_with_another_schema_raises(
        self, store: VectorStore, other: Schema, named: str
    ) -> None:
        store.create_schema(SCHEMA)
        store.upsert(make_records(2))
        with expect_error(SchemaMismatchError, f"create_schema({other!r}) on a store with {SCHEMA!r}", re.escape(named)):
            store.create_schema(other)
        assert store.describe() == SCHEMA, "a refused create_schema() must leave the stored schema as it was"
        assert store.count() == 2, "a refused create_schema() must keep the records"

    def test_identity_mismatch_message_names_both(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        with expect_error(SchemaMismatchError, "create_schema() with another model's identity", "contract-test:v1"):
            store.create_schema(Schema(dim=DIM, identity="another-model:v2", fields=FIELDS))
        with expect_error(SchemaMismatchError, "create_schema() with another model's identity", "another-model:v2"):
            store.create_schema(Schema(dim=DIM, identity="another-model:v2", fields=FIELDS))

    # -- before a schema exists ------------------------------------------------------------------
    @pytest.mark.parametrize("operation", sorted(BEFORE_SCHEMA))
    def test_operations_before_schema_raise_configuration_error(self, store: VectorStore, operation: str) -> None:
        with expect_error(ConfigurationError, f"{operation}() before create_schema()", "schema"):
            BEFORE_SCHEMA[operation](store)
        assert store.count() == 0, "count() before create_schema() must be 0"
        assert store.describe() is None, f"a refused {operation}() must not create a schema"

    def test_close_is_idempotent(self, store: VectorStore) -> None:
        store.create_schema(SCHEMA)
        store.close()
        store.close()
