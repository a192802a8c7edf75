"""engine.policy.cpu: the CPU's name and the instruction sets that set its matmul rate, read
from /proc/cpuinfo's text."""

from __future__ import annotations

from engine.policy.cpu import MATMUL_FLAGS, cpu_model, matmul_flags

AVX512_EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 fma avx2 avx512f avx512dq avx512_bf16 avx512_vnni sha_ni
"""
AVX2_EPYC = AVX512_EPYC.replace("avx512f avx512dq avx512_bf16 avx512_vnni ", "")


def test_the_model_name_and_the_matmul_flags_in_a_fixed_order():
    assert cpu_model(AVX512_EPYC) == "AMD EPYC"
    assert matmul_flags(AVX512_EPYC) == ("fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16")


def test_two_cpus_of_one_name_are_told_apart_by_their_flags():
    assert cpu_model(AVX2_EPYC) == cpu_model(AVX512_EPYC)
    assert matmul_flags(AVX2_EPYC) == ("fma", "avx2")


def test_no_cpuinfo_gives_no_flags_and_a_platform_name():
    assert matmul_flags("") == ()
    assert cpu_model("") != ""


def test_this_machine_reports_only_known_flags():
    assert set(matmul_flags()) <= set(MATMUL_FLAGS)
