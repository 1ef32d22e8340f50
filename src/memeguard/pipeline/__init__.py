"""Recipes and the runner: one YAML file drives clean -> features -> pretrain -> fine-tune -> seed average ->
ensemble -> report, every stage cached by a hash of its inputs (``memeguard run`` / ``memeguard demo``)."""
