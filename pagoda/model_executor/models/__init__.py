"""Model families (one file each) and the registry that maps architecture names to them."""

from pagoda.model_executor.models.kv_spec import KVCacheSpec
from pagoda.model_executor.models.registry import ModelRegistry, max_model_len_cap

__all__ = ["KVCacheSpec", "ModelRegistry", "max_model_len_cap"]
