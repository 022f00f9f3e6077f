"""Dotted paths to Python callables: ``scripts.task.Send`` -> module ``scripts.task``, ``Send``.

The longest importable module prefix wins, so ``pkg.mod.Class.method`` works
too. Paths are resolved relative to the app's *root*: the root is put at the
front of ``sys.path`` (and stays there, so that a handler importing a sibling
module at run time finds it too). The current directory is searched after the
root.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["DOTTED", "ResolveError", "add_root", "resolve"]

DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


class ResolveError(Exception):
    """The dotted path does not name an importable callable; ``str()`` says why."""


def add_root(root: Path) -> None:
    """Put ``root`` first on ``sys.path`` unless it is there already."""
    entry = str(root)
    if entry not in sys.path:
        sys.path.insert(0, entry)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def resolve(dotted: Any, root: Path | None) -> Callable[..., Any]:
    """The callable ``dotted`` names; raises ``ResolveError``."""
    if not isinstance(dotted, str) or not DOTTED.fullmatch(dotted):
        raise ResolveError(
            f"expected a dotted path like 'scripts.task.Send' (module, then attribute), "
            f"found {dotted!r}"
        )
    if root is not None:
        add_root(root)
    parts = dotted.split(".")
    module: ModuleType | None = None
    split = 0
    for split in range(len(parts) - 1, 0, -1):
        name = ".".join(parts[:split])
        try:
            module = importlib.import_module(name)
            break
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing and (name == missing or name.startswith(missing + ".")):
                continue  # this prefix is not a module: try a shorter one
            raise ResolveError(f"importing {name!r} failed: {exc}") from None
        except Exception as exc:
            raise ResolveError(f"importing {name!r} raised {type(exc).__name__}: {exc}") from None
    if module is None:
        where = f" (root {root})" if root is not None else ""
        raise ResolveError(f"no module {'.'.join(parts[:-1])!r} can be imported{where}")
    if root is not None:
        _check_origin(parts[0], root)
    target: Any = module
    for position in range(split, len(parts)):
        attribute = parts[position]
        try:
            target = getattr(target, attribute)
        except AttributeError:
            owner = ".".join(parts[:position])
            raise ResolveError(f"{owner!r} has no attribute {attribute!r}") from None
        except Exception as exc:
            raise ResolveError(f"reading {dotted!r} raised {type(exc).__name__}: {exc}") from None
    if not callable(target):
        raise ResolveError(f"{dotted!r} is a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def _check_origin(top: str, root: Path) -> None:
    """Refuse a package the root holds but that was already imported from elsewhere.

    The module counts as the root's when one of its locations is the root's own
    ``top`` package or ``top.py``, both sides with their symbolic links resolved:
    a package linked into the root (``app/scripts -> ../shared/scripts``) is the
    root's, though its files live outside it.
    """
    candidates = [c.resolve() for c in (root / top, root / f"{top}.py") if c.exists()]
    if not candidates:
        return
    module = sys.modules.get(top)
    if module is None:
        return
    locations = [*getattr(module, "__path__", []), getattr(module, "__file__", None) or ""]
    for location in locations:
        if not location:
            continue
        resolved = Path(location).resolve()
        if any(resolved.is_relative_to(candidate) for candidate in candidates):
            return
    shown = locations[0] if locations and locations[0] else "elsewhere"
    raise ResolveError(
        f"module {top!r} was already imported from {shown}, not from the root {root}; "
        "rename one of them or load the tasks in a fresh process"
    )
