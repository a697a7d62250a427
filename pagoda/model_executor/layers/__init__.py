"""Building blocks of the models: tensor-parallel linear layers, norms, rotary, activations, attention, and
the quantization formats that give linear layers their methods (quantization/)."""
