"""Every module of the package imports first, on its own: an import cycle hidden by the order the usual
entry points import modules in (definitions, the CLI) would break whoever imports the module directly."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import billing_ai


def test_every_module_imports_first_on_its_own():
    names = sorted(m.name for m in pkgutil.walk_packages(billing_ai.__path__, "billing_ai."))
    assert "billing_ai.ingestion.usage_files.migrations" in names and len(names) > 90
    failed = {}
    saved = {k: v for k, v in sys.modules.items() if k == "billing_ai" or k.startswith("billing_ai.")}
    try:
        for name in names:
            for k in [k for k in sys.modules if k == "billing_ai" or k.startswith("billing_ai.")]:
                del sys.modules[k]  # third-party packages stay loaded: only our import order is under test
            try:
                importlib.import_module(name)
            except Exception as e:  # every failure is reported with its module
                failed[name] = f"{type(e).__name__}: {e}"
    finally:
        for k in [k for k in sys.modules if k == "billing_ai" or k.startswith("billing_ai.")]:
            del sys.modules[k]
        sys.modules.update(saved)
    assert failed == {}
