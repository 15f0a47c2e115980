"""``python -m mist_debias`` runs the ``mist`` command line."""

from mist_debias.app.cli import main

main()
