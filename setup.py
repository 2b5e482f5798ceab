"""Only the C part of the build; everything else is in pyproject.toml.

`dynadnn.runtime._native` is the manager's per-inference path (latency monitor and the feedback policy's
step) in C. It is optional: without a compiler the pure-Python reference implementations run instead,
and `dynadnn info` says which one is in use."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "dynadnn.runtime._native", ["src/dynadnn/runtime/_native.c"], optional=True,
    # the same floating-point operation order as the Python reference (no fused multiply-add)
    extra_compile_args=["-O2", "-ffp-contract=off"],
)])
