"""``sspu``, the command-line interface: one module per command group, parsers and
printing over the layers below (nothing imports it)."""
