"""``python -m carl ...`` (e.g. ``accelerate launch -m carl train RECIPE``)."""

from carl.cli import main

main()
