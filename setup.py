"""The decoder's compiled fast path, the one part pyproject.toml cannot declare (without
setuptools' experimental ext-modules table). Plain CPython C API, no other library; optional:
where it does not build, decoding takes the DuckDB paths alone."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("clicklake.events._cdecode", ["src/clicklake/events/_cdecode.c"], optional=True),
    ]
)
