"""``python -m mist_debias`` runs the ``mist`` command line."""

from mist_debias.cli import main

main()
