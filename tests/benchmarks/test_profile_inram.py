"""benchmarks.profile_inram: ops fall into their kind of work inside the layer range that
encloses them, and the wall not spent in any op is counted as Python."""

from __future__ import annotations

from types import SimpleNamespace

from benchmarks import profile_inram as prof


def _event(name: str, parent=None, total_us: float = 0.0, self_us: float = 0.0):
    return SimpleNamespace(name=name, cpu_parent=parent, cpu_time_total=total_us,
                           self_cpu_time_total=self_us)


def test_ops_are_counted_in_their_layer_range_by_kind():
    layer = _event("decoder:prefill", total_us=10e6)
    linear = _event("aten::linear", layer, self_us=0.1e6)
    events = [layer, linear, _event("aten::mm", linear, self_us=6e6),
              _event("mkldnn::_linear_pointwise", layer, self_us=1e6),
              _event("aten::_scaled_dot_product_flash_attention_for_cpu", layer, self_us=1e6),
              _event("aten::copy_", layer, self_us=0.5e6),
              _event("aten::empty", layer, self_us=0.1e6),
              _event("aten::mul", layer, self_us=0.3e6),
              _event("aten::mm", None, self_us=99e6)]  # outside any layer: not counted
    row = prof.breakdown(events)["decoder:prefill"]
    assert row["calls"] == 1 and row["wall"] == 10.0
    assert row["matmul"] == 7.0 and row["attention"] == 1.0 and row["copies"] == 0.5
    assert row["allocation"] == 0.1 and row["element-wise"] == 0.3
    assert abs(row["python"] - (0.1 + 10.0 - 9.0)) < 1e-9  # dispatch + wall outside ops
    assert "| decoder:prefill | 1 | 10.00 | 70.0% |" in prof.format_breakdown({"decoder:prefill": row})


def test_labelled_layers_restores_the_math_functions():
    from engine.model import math

    before = math.decoder
    with prof.labelled_layers():
        assert math.decoder is not before
    assert math.decoder is before
