"""The named choices of the downstream figures (a module of constants, so the CLI can list them cheaply)."""

#: Figure kinds of ``plot``.
KINDS = ("dotplot", "heatmap")
#: Row orders of a figure (see :func:`cell2net_attr.downstream.plots.display_order`).
ORDERS = ("groups", "value", "input", "genome")
