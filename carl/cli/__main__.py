"""``python -m carl.cli ...`` (e.g. ``accelerate launch -m carl.cli train RECIPE``)."""

from carl.cli import main

main()
