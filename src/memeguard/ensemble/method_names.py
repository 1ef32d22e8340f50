"""The ensemble methods' names, and vilio's spellings of them, in a module light enough for ``--help``.

A method is named wherever a user picks one (``memeguard ensemble --method``, ``ensemble_folder(method=)``,
a recipe's ``ensemble.method``); each of those passes the name through :func:`canonical_method` once, so
everything past that point sees only the readable names below.
"""

from __future__ import annotations

from memeguard.errors import ConfigError

LOOP = "loop"  # vilio's two-pass loop over all four blends (``utils/ens.py``'s ``main``)
MEAN = "mean"  # mean of min-max normalised columns (vilio: SA, "simple average")
POWER = "power"  # mean of squared normalised columns (vilio: PA)
RANK = "rank"  # mean of rank / n (vilio: RA)
SIMPLEX = "simplex"  # weighted mean, weights from vilio's simplex tuner (vilio: SX)
COORDINATE = "coordinate"  # weighted mean, weights from the coordinate search (memeguard's faster SX)
METHODS: tuple[str, ...] = (LOOP, MEAN, POWER, RANK, SIMPLEX, COORDINATE)
# vilio's ``--enstype`` spellings and memeguard 0.1's ``opt``: accepted everywhere a method is named.
METHOD_ALIASES: dict[str, str] = {"sa": MEAN, "pa": POWER, "ra": RANK, "sx": SIMPLEX, "opt": COORDINATE}

# Weight searches a ``loop`` can use for its SX blends.
OPTIMIZER_NAMES: tuple[str, ...] = (SIMPLEX, COORDINATE)
# How the test splits are labelled (see ``memeguard.ensemble.folder``).
TEST_LABEL_RULES: tuple[str, ...] = ("prior", "rate", "threshold")


def canonical_method(name: str) -> str:
    """``"sa"`` -> ``"mean"``, ``"mean"`` -> ``"mean"``; an unknown name is a :class:`ConfigError`."""
    method = METHOD_ALIASES.get(name, name)
    if method not in METHODS:
        aliases = ", ".join(f"{old}={new}" for old, new in METHOD_ALIASES.items())
        raise ConfigError(f"unknown ensemble method {name!r}; choose from {', '.join(METHODS)} ({aliases})")
    return method
