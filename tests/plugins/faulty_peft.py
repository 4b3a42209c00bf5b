"""A real ``tuneloop`` process whose PEFT calls fail on demand: the stand-in for a PEFT version mismatch.

    python -m tests.plugins.faulty_peft FAULT_FILE model-server --model DIR ...

Everything is real (gunicorn, the Flask app, the engine, transformers, PEFT)
except that, while ``FAULT_FILE`` exists, the transformers PEFT methods it names
raise the ``ValueError`` transformers raises for an incompatible PEFT (the
incident in issue 22). The file is JSON, rewritten by the test at any time::

    {"methods": ["enable_adapters", "disable_adapters"], "paths": ["/tmp/.../candidate"]}

``paths`` narrows the fault to adapters loaded from a folder whose path contains
one of the strings (empty: every call fails, as a real version mismatch does).
``load_adapter`` and ``set_adapter`` look at the adapter they are called for;
``enable_adapters``, ``disable_adapters`` and ``delete_adapter`` fail when a
matching adapter is loaded on the model. The patch is applied before gunicorn
forks its worker, so the worker inherits it.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

from transformers.integrations.peft import PeftAdapterMixin

PEFT_MISMATCH = "The version of PEFT you are using is not compatible, please use a version >= 0.18.0"
METHODS = ("load_adapter", "set_adapter", "enable_adapters", "disable_adapters", "delete_adapter")


def _fault(fault_file: Path) -> dict | None:
    try:
        return json.loads(fault_file.read_text())
    except (OSError, ValueError):
        return None


def _matches(paths: list[str], folder: str | None) -> bool:
    return not paths or (folder is not None and any(p in folder for p in paths))


def install(fault_file: Path) -> None:
    """Wrap the PEFT methods of every transformers model so they consult ``fault_file`` on each call."""

    def wrap(method: str):
        original = getattr(PeftAdapterMixin, method)

        @functools.wraps(original)
        def wrapper(self, *args, **kwargs):
            folders = self.__dict__.setdefault("_fault_folders", {})  # internal adapter name -> folder
            if method == "load_adapter":
                folder = str(args[0] if args else kwargs.get("peft_model_id"))
                concerned = [folder]
                folders[kwargs.get("adapter_name") or "default"] = folder
            elif method == "set_adapter":
                name = args[0] if args else kwargs.get("adapter_name")
                concerned = [folders.get(name)]
            else:
                concerned = [folders.get(n) for n in (getattr(self, "peft_config", None) or {})]
            fault = _fault(fault_file)
            if fault and method in fault.get("methods", []):
                if any(_matches(fault.get("paths", []), folder) for folder in concerned or [None]):
                    raise ValueError(PEFT_MISMATCH)
            return original(self, *args, **kwargs)

        setattr(PeftAdapterMixin, method, wrapper)

    for method in METHODS:
        wrap(method)


def main() -> None:
    fault_file, *args = sys.argv[1:]
    install(Path(fault_file))
    from cli.main import cli

    cli.main(args=args, prog_name="tuneloop")


if __name__ == "__main__":
    main()
