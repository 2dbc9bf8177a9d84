"""``python -m broker.cli``: the same as the ``cemesh`` console script."""

from broker.cli.commands import main

main()
