"""Builds the native low-bit kernels of ``efficient.quant`` (a plain shared library, loaded with ctypes).

Metadata lives in pyproject.toml; this file only adds the C++ library, so ``pip install -e .`` (and a normal
install) compile it. No Python or PyTorch headers are used: the library takes raw data pointers. If the build
fails (no compiler), installation still succeeds and ``efficient.quant`` falls back to its PyTorch kernels.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the kernels when a C++ compiler is available; otherwise warn and continue."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler failure must not break the install
            print(f"warning: could not build {ext.name} ({exc}); efficient.quant will use its PyTorch fallback")

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # not a Python extension module: no PyInit_ symbol


setup(
    ext_modules=[
        Extension(
            "efficient.quant._lutkernels",
            sources=["efficient/quant/csrc/lutkernels.cpp", "efficient/quant/csrc/stepglue.cpp",
                     "efficient/quant/csrc/int8kernels.cpp"],
            language="c++",
            extra_compile_args=["-O3", "-std=c++17", "-fPIC", "-ffp-contract=off", "-fno-strict-aliasing"],
            extra_link_args=["-lpthread"],
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
