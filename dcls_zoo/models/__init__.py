"""The model zoo: timm models with DCLS convolutions, registered in timm on import."""

from .dclsify import Conversion, DclsifyReport, clamp_model_positions_, dcls_layers, dclsify, stage_of

__all__ = ["Conversion", "DclsifyReport", "clamp_model_positions_", "dcls_layers", "dclsify", "stage_of"]
