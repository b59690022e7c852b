"""cell2net-attr: Integrated-Gradients TF attributions for Cell2Net checkpoints, fast and safe."""

__version__ = "0.1.0"

from .api import AttributionModel, load_model, tf_attr  # noqa: E402

__all__ = ["AttributionModel", "load_model", "tf_attr", "__version__"]
