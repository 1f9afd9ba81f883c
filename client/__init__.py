"""The hospital side: local DP-SGD training and evaluation, and the Flower ClientApp that wires them."""
