"""VectorStoreContract's asserts get pytest's detailed reports from every module of the suite.

The plugin registers ``lookalike.testing.contract`` for assertion rewriting; pytest rewrites that
module and the modules under it (``lookalike.testing.contract.*``) only. The suite is split over
several modules: each must stay under that name, or its failures lose pytest's account of what
differed.
"""

from __future__ import annotations

import pkgutil
import sys

import lookalike.testing.contract as contract

REGISTERED = "lookalike.testing.contract"  # what _lookalike_pytest registers


def _suite_modules() -> set[str]:
    classes = [c for c in contract.VectorStoreContract.__mro__ if c is not object]
    names = {c.__module__ for c in classes} | {contract.expect_error.__module__}
    names |= {f"{REGISTERED}.{m.name}" for m in pkgutil.iter_modules(contract.__path__)}
    return names


def test_every_module_of_the_suite_is_under_the_registered_name() -> None:
    outside = sorted(
        name for name in _suite_modules() if name != REGISTERED and not name.startswith(REGISTERED + ".")
    )
    assert not outside, f"pytest would not rewrite the asserts of {outside}: move them under {REGISTERED}"


def test_the_suites_modules_are_rewritten_alike() -> None:
    for name in _suite_modules():
        __import__(name)
    loaders = {name: type(sys.modules[name].__loader__).__name__ for name in _suite_modules()}
    assert len(set(loaders.values())) == 1, f"some of the suite's modules are not rewritten: {loaders}"
    assert len(loaders) >= 8, sorted(loaders)  # the package, its helpers and its mixins
