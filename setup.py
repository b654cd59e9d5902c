"""The compiled fast paths (the decoder's and the enrichment kernels), the one part
pyproject.toml cannot declare (without setuptools' experimental ext-modules table). Plain
CPython C API, no other library; optional: where they do not build, decoding and enrichment
take their DuckDB paths alone."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "clicklake.events._cdecode",
            ["src/clicklake/events/_cdecode.c"],
            depends=["src/clicklake/_cbuffer.h", "src/clicklake/_carrow.h"],
            optional=True,
        ),
        Extension(
            "clicklake.enrich._ckernels",
            ["src/clicklake/enrich/_ckernels.c"],
            depends=["src/clicklake/_cbuffer.h", "src/clicklake/_carrow.h"],
            optional=True,
        ),
    ]
)
