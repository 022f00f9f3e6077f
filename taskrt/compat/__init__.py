"""Compatibility layers for apps ported from other task systems (``compat.yao``)."""

from .yao import YaoTasks

__all__ = ["YaoTasks"]
