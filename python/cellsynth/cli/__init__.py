"""The ``cellsynth`` command line (entry point: cellsynth.cli.main:main), one file per command.

Commands that are PyTorch jobs load their code through :mod:`cellsynth.torch_entry` when they run,
so the rest of the CLI works without torch.
"""
