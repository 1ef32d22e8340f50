"""The DeVLBERT module's former name: :mod:`memeguard.models.devlbert` holds the model now.

Kept so that ``from memeguard.models.vilbert import DevlbertForMemes`` in existing code still works.
"""

from memeguard.models.devlbert import DevlbertConfig, DevlbertForMemes, DevlbertModel, DevlbertProcessor

__all__ = ["DevlbertConfig", "DevlbertForMemes", "DevlbertModel", "DevlbertProcessor"]
