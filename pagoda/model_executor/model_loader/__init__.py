"""Building models and loading their weights: `get_model(model_config, load_config, device, attn_backend)`."""

from pagoda.model_executor.model_loader.loader import get_model, load_checkpoint

__all__ = ["get_model", "load_checkpoint"]
