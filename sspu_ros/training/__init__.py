"""Self-supervised training of the SSPU-Net generator: data, trainer."""
