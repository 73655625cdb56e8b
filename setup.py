"""The one compiled part of Berth: runtime.container._clone (see its source's header).
Everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "runtime.sys._clone", ["runtime/sys/_clone.c"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"])])
