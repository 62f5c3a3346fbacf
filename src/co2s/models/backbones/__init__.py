"""Pretrained ViT backbones: the student wrappers (:mod:`.clip`, :mod:`.dino`) and the loading of
their weights from the files users have (:mod:`.weights`).

Nothing is imported here, so that importing one submodule does not pull in the others.
"""
