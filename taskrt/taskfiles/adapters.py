"""Adapters between a task file's handlers and the runtime's calling conventions.

Anchor handlers take one parameters object; the runtime calls a handler with
the job's arguments (keywords, or one positional object). The wrappers here
turn one into the other, keep a sync handler sync and an async one async (the
runtime runs sync handlers off the event loop), and carry the target's name
and docstring.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from .. import params as parameters_module
from ..definitions import Arguments, CallStyle, TaskSpec
from ..errors import in_thread
from .common import accepts_keyword, is_async

__all__ = [
    "converter",
    "executor_handler",
    "executor_names",
    "failed_hook",
    "find_method",
    "identity",
    "off_the_loop",
    "params_of",
    "process_handler",
    "snake_case",
    "stand_in",
    "with_bind_check",
]


_SEPARATORS = re.compile(r"[^A-Za-z0-9]+")
# Where a word starts inside letters and digits: a capital after a small letter or
# a digit (``send|Email``), and the last capital of a run that a small letter
# follows (``HTTP|Server``). Each side looks at one or two characters, so a
# name is read once, in linear time: ``([A-Z]+)([A-Z][a-z])`` backtracked over
# every run of capitals, and a name of 100,000 of them took over a minute.
_WORD_START = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    """``SendEmail`` -> ``send_email``, ``deleteOpaqueKey`` -> ``delete_opaque_key``,
    ``HTTPServer`` -> ``http_server``."""
    text = _WORD_START.sub("_", _SEPARATORS.sub("_", name))
    return text.strip("_").lower()


def executor_names(name: str, kind: str) -> list[str]:
    """Method names tried on the executor: ``kind`` is ``"execute"`` or ``"failed"``."""
    forms = list(dict.fromkeys([snake_case(name), name]))
    if kind == "execute":
        return [f"execute_{form}" for form in forms]
    return [f"on_{form}_failed" for form in forms]


def params_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A job's parameters object: one positional mapping, or the keyword arguments."""
    if len(args) == 1 and not kwargs and isinstance(args[0], Mapping):
        return dict(args[0])
    return dict(kwargs)


def find_method(executor: object, names: list[str]) -> Callable[..., Any] | None:
    for candidate in names:
        try:
            found = getattr(executor, candidate, None)
        except Exception:
            found = None
        if callable(found):
            return found  # type: ignore[no-any-return]
    return None


def identity(value: dict[str, Any]) -> Any:
    return value


def converter(method: Callable[..., Any], index: int) -> Callable[[dict[str, Any]], Any]:
    """Turns the parameters dict into what ``method``'s parameter ``index`` is annotated as."""
    try:
        params = [
            p
            for p in inspect.signature(method).parameters.values()
            if p.kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return identity
    if len(params) <= index:
        return identity
    try:
        hints = typing.get_type_hints(method)
    except Exception:
        return identity
    hint = hints.get(params[index].name)
    if not isinstance(hint, type):
        return identity
    from_dict = getattr(hint, "from_dict", None)
    if callable(from_dict):
        return from_dict  # type: ignore[no-any-return]
    if dataclasses.is_dataclass(hint):
        cls = hint

        def build(data: dict[str, Any]) -> Any:
            return cls(**data)

        return build
    return identity


def executor_handler(
    method: Callable[..., Any], convert: Callable[[dict[str, Any]], Any]
) -> Callable[..., Any]:
    wants_job = accepts_keyword(method, "job")
    handler: Callable[..., Any]
    if is_async(method):

        async def run_async(job: Any, *args: Any, **kwargs: Any) -> Any:
            value = convert(params_of(args, kwargs))
            if wants_job:
                return await method(value, job=job)
            return await method(value)

        handler = run_async
    else:

        def run_sync(job: Any, *args: Any, **kwargs: Any) -> Any:
            value = convert(params_of(args, kwargs))
            return method(value, job=job) if wants_job else method(value)

        handler = run_sync
    return _named(handler, method)


def process_handler(target: Callable[..., Any], call: CallStyle) -> Callable[..., Any]:
    handler: Callable[..., Any]
    if call == "plain":
        if is_async(target):

            async def plain_async(*args: Any, **kwargs: Any) -> Any:
                return await target(**params_of(args, kwargs))

            handler = plain_async
        else:

            def plain_sync(*args: Any, **kwargs: Any) -> Any:
                return target(**params_of(args, kwargs))

            handler = plain_sync
    elif is_async(target):

        async def first_async(first: Any, *args: Any, **kwargs: Any) -> Any:
            return await target(first, **params_of(args, kwargs))

        handler = first_async
    else:

        def first_sync(first: Any, *args: Any, **kwargs: Any) -> Any:
            return target(first, **params_of(args, kwargs))

        handler = first_sync
    return _named(handler, target)


def failed_hook(
    hook: Callable[..., Any], convert: Callable[[dict[str, Any]], Any]
) -> Callable[..., Any]:
    wrapper: Callable[..., Any]
    if is_async(hook):

        async def failed_async(job: Any, tx: Any) -> Any:
            return await hook(job.id, convert(params_of(job.args, job.kwargs)), tx)

        wrapper = failed_async
    else:

        def failed_sync(job: Any, tx: Any) -> Any:
            return hook(job.id, convert(params_of(job.args, job.kwargs)), tx)

        wrapper = failed_sync
    return _named(wrapper, hook)


def off_the_loop(
    hooks: Mapping[str, Callable[..., Any]], task: str
) -> dict[str, Callable[..., Any]]:
    """A task file's event hooks, the sync ones run in one thread of the task's own.

    A Yao hook is ordinarily blocking code (a database write): on the event loop
    it stalls every job. Each call of a sync hook is queued on the task's thread,
    so the task's hook calls run in the order they are made (a job's reports 1,
    2, 3; its add before its success), and returns an awaitable of it: the
    runtime treats that as an async hook's result (one that raises is logged
    and changes nothing; stop waits for it within its grace). Async hooks run on
    the loop as before; ``next_id`` is not given here (its result is the id).
    """
    if all(is_async(hook) for hook in hooks.values()):
        return dict(hooks)
    # No thread before the first call: an executor starts its worker on a submit.
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"taskrt-hooks-{task}")
    return {name: hook if is_async(hook) else _queued(hook, thread) for name, hook in hooks.items()}


def _queued(hook: Callable[..., Any], thread: ThreadPoolExecutor) -> Callable[..., Any]:
    def queued(*args: Any) -> asyncio.Future[Any]:
        # called on the loop; the hook sees the context it would have seen there
        context = contextvars.copy_context()
        return asyncio.wrap_future(thread.submit(context.run, in_thread, "the hook", hook, *args))

    queued.__wrapped__ = hook  # type: ignore[attr-defined]  # its signature, for readers
    return _named(queued, hook)


def _named(wrapper: Callable[..., Any], target: Callable[..., Any]) -> Callable[..., Any]:
    for attribute in ("__name__", "__qualname__", "__doc__", "__module__"):
        value = getattr(target, attribute, None)
        if isinstance(value, str):
            try:
                setattr(wrapper, attribute, value)
            except (AttributeError, TypeError):
                pass
    return wrapper


def with_bind_check(spec: TaskSpec, target: Callable[..., Any], call: CallStyle) -> TaskSpec:
    """Add to the schema check a check that the parameters bind to ``target``'s keywords."""
    bind = parameters_module.bind_check(replace(spec, handler=target, call=call))
    schema_check = spec.validator
    if bind is None or schema_check is None:
        return spec
    checked_bind = bind

    def validate(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Arguments | None:
        fitted = schema_check(args, kwargs)
        checked_bind((), params_of(*(fitted or (args, kwargs))))
        return fitted

    return replace(spec, validator=validate)


def stand_in(name: str, kind: str) -> Callable[..., Any]:
    """A handler (or failure hook) for a task whose executor is not known yet."""
    wanted = " or ".join(executor_names(name, kind))

    def missing(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"task {name!r} was loaded without an executor providing {wanted}"
        )

    missing.__name__ = missing.__qualname__ = f"missing_{kind}_{name}"
    return missing
