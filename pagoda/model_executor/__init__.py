"""Everything between a checkpoint folder and logits: layers, model families, the registry, the loader,
and the quantization formats (layers/quantization/).

Entry points: `pagoda.model_executor.model_loader.get_model` and
`pagoda.model_executor.models.ModelRegistry`.
"""
