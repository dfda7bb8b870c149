"""Experiments: `python -m experiments.NAME --config configs/NAME.py[:preset] --workdir DIR`."""
