"""Flash Attention 2 backends: compiled `flash-attn` or prebuilt `kernels`, either one counts as FA2."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import run_cli


@pytest.fixture
def installed(monkeypatch):
    """`installed({"kernels"})`: make find_spec report exactly these of flash_attn/kernels as importable."""
    real = importlib.util.find_spec

    def set_installed(names: set[str]) -> None:
        def fake(name, *args, **kwargs):
            if name in ("flash_attn", "kernels"):
                return real("json") if name in names else None  # any real spec stands for "present"
            return real(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", fake)

    return set_installed


@pytest.mark.parametrize(("names", "backend"), [
    ({"flash_attn", "kernels"}, "flash-attn"),  # transformers prefers the compiled package when both exist
    ({"flash_attn"}, "flash-attn"),
    ({"kernels"}, "kernels"),
    (set(), None),
])
def test_either_backend_counts_as_fa2(installed, names, backend):
    from ettin_cli.core import hardware

    installed(names)
    assert hardware.fa2_backend() == backend
    assert hardware.flash_attn_installed() is (backend is not None)
    description = hardware.fa2_description()
    assert description.startswith(backend or "none")


def test_kernels_alone_gives_bf16_fa2_on_an_ampere_gpu(installed):
    from ettin_cli.core.errors import EttinError
    from ettin_cli.core.hardware import resolve_precision

    installed({"kernels"})
    auto = resolve_precision("cuda:0", capability=(9, 0))
    assert (auto.dtype, auto.attn, auto.unpadded) == ("bfloat16", "flash_attention_2", True)
    installed(set())
    assert resolve_precision("cuda:0", capability=(9, 0)).attn == "sdpa"
    with pytest.raises(EttinError, match="nor the prebuilt `kernels` backend"):
        resolve_precision("cuda:0", "bfloat16", "flash_attention_2", capability=(9, 0))


@pytest.mark.parametrize(("name", "is_fa2"), [
    ("flash_attention_2", True),
    ("kernels-community/flash-attn2", True),  # what a model loaded with the kernels backend reports
    ("kernels-community/flash-attn2:flash_attn_varlen_func", True),
    ("kernels-community/flash-attn2@main", True),
    ("kernels-community/vllm-flash-attn3", False),
    ("sdpa", False),
    (None, False),
])
def test_the_kernels_attention_name_is_recognised_as_fa2(name, is_fa2):
    from ettin_cli.core.hardware import is_flash_attention_2

    assert is_flash_attention_2(name) is is_fa2


def test_env_says_which_fa2_backend_is_active(installed, capsys):
    installed({"kernels"})
    code, out, _ = run_cli(["env"], capsys)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("flash_attn_backend"))
    assert "kernels (prebuilt kernels-community/flash-attn2" in line
    installed(set())
    code, out, _ = run_cli(["env"], capsys)
    assert "flash_attn_backend     none" in out
