"""Learned models: the SSPU-Net generator and its parts.

``build_generator(GeneratorConfig(...))`` gives a :class:`Generator` mapping sparse patches
(B, N, 3) to dense ones (B, ratio * N, 3).
"""

from .feature_extraction import DenseEdgeBlock, DenseFeatureExtractor
from .generator import (
    Generator,
    GeneratorConfig,
    build_generator,
    count_flops,
    count_macs,
    count_parameters,
    describe_generator,
    export_onnx,
)
from .neighbor_expansion import NeighborExpansionUnit, grid_codes, neighbor_interpolation

__all__ = [
    "DenseEdgeBlock",
    "DenseFeatureExtractor",
    "Generator",
    "GeneratorConfig",
    "NeighborExpansionUnit",
    "build_generator",
    "count_flops",
    "count_macs",
    "count_parameters",
    "describe_generator",
    "export_onnx",
    "grid_codes",
    "neighbor_interpolation",
]
