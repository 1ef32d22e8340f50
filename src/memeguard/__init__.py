"""memeguard: hateful-meme detection with vilio's recipe, as one PyTorch package.

Stages, in the order data flows: ``data`` -> ``features`` -> ``models`` -> ``training`` ->
``ensemble`` -> ``pipeline``; ``cli`` wires them to the ``memeguard`` command.
"""

__version__ = "0.1.0"
