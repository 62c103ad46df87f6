"""The ``cellsynth`` command line (entry point: cellsynth.cli.main:main)."""
