"""Builds spillway (the metadata is in pyproject.toml). mypyc compiles the Thrift source's
decoder, ``agents/thrift_wire.py``, into a C extension when it can; the plain Python module
stays in the package and runs wherever the extension is missing, stale or turned off
(``SPILLWAY_PURE_PYTHON=1``, at build time or at run time). See ``agents/thrift_codec.py``."""

from __future__ import annotations

import os

from setuptools import setup


def compiled() -> list:  # type: ignore[type-arg]
    if os.environ.get("SPILLWAY_PURE_PYTHON"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # a build without the build requirements: plain Python
        return []
    extensions = mypycify(["--ignore-missing-imports", "agents/thrift_wire.py"], opt_level="3")
    for extension in extensions:
        extension.optional = True  # no C compiler: a warning, and the plain Python module
    return extensions


setup(ext_modules=compiled())
