"""``python -m dmnflow`` runs the ``dmnflow`` command."""

from .cli import main

main()
