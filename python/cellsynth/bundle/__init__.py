"""Bundles: one directory per trained model, loaded and validated once.

Loading, validation and saving (:mod:`.load`), the exports manifest (:mod:`.exports`), the real
cells the bundle never saw (:mod:`.heldout`), putting real cells on its scale (:mod:`.scale`). The
shipped bundles' files are in ``cellsynth/models/``.
"""
