"""Building blocks of the models: tensor-parallel linear layers, norms, rotary, activations, attention."""
