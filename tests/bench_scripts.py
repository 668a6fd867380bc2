"""Loading a script under bench/ (not a package) as a module, for the tests of its formulas."""

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_bench_script(name: str) -> Iterator[ModuleType]:
    """Yield bench/`name`.py as module `name`, registered in sys.modules while in use (dataclasses look their
    module up by name); for a module-scoped fixture."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(name, None)
