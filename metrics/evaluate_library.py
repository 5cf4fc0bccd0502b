"""Import the `evaluate` library even though the repository's top-level `evaluate.py` script has the same name.

Whenever the repository root is on `sys.path` (`python train.py` or `accelerate launch evaluate.py` from the root,
pytest with the root as rootdir, `python -c ...` in the root), a plain `import evaluate` finds the script first.
`import_evaluate_library` imports the installed package with those `sys.path` entries hidden, and replaces a
`sys.modules["evaluate"]` that is not the library (the script imported under the library's name).
"""

import importlib
import importlib.util
import os
import sys
import warnings
from types import ModuleType


def is_evaluate_library(module: ModuleType | None) -> bool:
    """True for Hugging Face's `evaluate` package (a package exposing `load`), False for the script or anything else."""
    return module is not None and hasattr(module, "__path__") and callable(getattr(module, "load", None))


def _shadows_library(entry: str) -> bool:
    """A `sys.path` entry holding a single-file `evaluate.py` module, which would win over the package behind it."""
    return os.path.isfile(os.path.join(entry or os.getcwd(), "evaluate.py"))


def import_evaluate_library() -> ModuleType:
    """Return the installed `evaluate` package, importing it if needed; `sys.modules["evaluate"]` is it afterwards."""
    module = sys.modules.get("evaluate")
    if is_evaluate_library(module):
        return module
    if module is not None:
        # Typically the project's evaluate.py, imported as `evaluate` by a plain `import evaluate` from the root.
        # Whoever imported it keeps their reference; from now on the name means the library.
        warnings.warn(
            f"sys.modules['evaluate'] was {getattr(module, '__file__', module)!r}, not the `evaluate` library (the "
            "repository's evaluate.py shadows it when the repository root is on sys.path); replacing it.",
            stacklevel=2,
        )
        del sys.modules["evaluate"]
    saved_path = sys.path[:]
    sys.path[:] = [entry for entry in sys.path if not _shadows_library(entry)]
    try:
        spec = importlib.util.find_spec("evaluate")
        if spec is None or spec.submodule_search_locations is None:  # missing, or still a single-file module
            raise ImportError(
                "Cannot import Hugging Face's `evaluate` library: besides the folders holding an evaluate.py, "
                f"sys.path offers {getattr(spec, 'origin', None)!r}. Install it: pip install -r requirements.txt."
            )
        module = importlib.import_module("evaluate")
    finally:
        # Restore the caller's entries, keeping any the import appended (e.g. the modules cache).
        sys.path[:] = saved_path + [entry for entry in sys.path if entry not in saved_path]
    if not is_evaluate_library(module):
        raise ImportError(
            f"`import evaluate` gave {getattr(module, '__file__', module)!r}, not Hugging Face's `evaluate` library. "
            "Install it (pip install -r requirements.txt)."
        )
    return module
