"""Bundles: one directory per trained model, loaded and validated once.

:mod:`.format` (file names, required entries, the label spec), :mod:`.load` (the
:class:`~cellsynth.bundle.load.Bundle` and :func:`~cellsynth.bundle.load.load_bundle`),
:mod:`.validate` (every check loading makes), :mod:`.save` (writing one atomically),
:mod:`.exports` (the exports manifest), :mod:`.heldout` (the real cells the bundle never saw),
:mod:`.scale` (putting real cells on its scale). The shipped bundles' files are in
``cellsynth/models/``.
"""
