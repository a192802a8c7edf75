"""Pure layer math. Each layer declares its weights (`specs`) and computes from a dict of
tensors already on the compute device; it never moves data or reads a policy."""

from engine.model.layers import LayerSpec, WeightSpec, layer_specs
from engine.model.step import StepInputs

__all__ = ["LayerSpec", "StepInputs", "WeightSpec", "layer_specs"]
