"""The model layer: :class:`ContinuousAR` and what is not vocabulary about it.

- :mod:`carl.model.ar`: the model (its five parts, the loss, the hidden states);
- :mod:`carl.model.backbone`: the transformer and its KV cache;
- :mod:`carl.model.generation`: the generation loops (bidirectional, causal);
- :mod:`carl.model.folder`: the model folder format and the Hub mixin;
- :mod:`carl.model.loading`: opening a model with its recipe (:func:`open_model`);
- :mod:`carl.model.card`: the model card;
- :mod:`carl.model.samples`: sample grids.
"""

from carl.model.ar import ContinuousAR
from carl.model.loading import LoadedModel, load_model, open_model

__all__ = ["ContinuousAR", "LoadedModel", "load_model", "open_model"]
