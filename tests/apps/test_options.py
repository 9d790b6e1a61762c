"""One dtype vocabulary for every subcommand: short names, the torch names as aliases, one clear error."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch

from apps.commands.options import dtype_option, torch_dtype


@pytest.mark.parametrize("spelling, name", [("fp32", "fp32"), ("float32", "fp32"), ("BF16", "bf16"),
                                            ("bfloat16", "bf16"), ("float16", "fp16"), ("auto", "auto")])
def test_every_spelling_maps_to_one_name(spelling, name):
    assert dtype_option(("auto", "fp32", "bf16", "fp16"))(spelling) == name


def test_names_map_to_torch_dtypes():
    assert [torch_dtype(n) for n in ("fp32", "bf16", "fp16", "auto")] == [torch.float32, torch.bfloat16,
                                                                          torch.float16, None]


def test_a_dtype_outside_the_command_s_set_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="choose from fp32, bf16"):
        dtype_option(("fp32", "bf16"))("fp16")


@pytest.mark.parametrize("argv", [["tokenizer", "encode", "x.wav", "x.safetensors"], ["asr", "x.wav"]])
def test_the_cli_names_a_bad_dtype_in_one_line(argv):
    res = subprocess.run([sys.executable, "-m", "apps", *argv, "--dtype", "int8"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "unknown dtype 'int8'" in res.stderr
