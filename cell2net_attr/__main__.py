"""``python -m cell2net_attr``."""

from .cli import main

main()
