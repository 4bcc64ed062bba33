"""Build of the optional C part: the relay path's per-packet loops (gateway/rtp/_spans.c).

Everything else is in pyproject.toml. Without a C compiler the build goes on without it and
the gateway uses the same functions in Python (gateway/rtp/spans.py), only slower.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gateway.rtp._spans",
            ["gateway/rtp/_spans.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            optional=True,
        )
    ]
)
