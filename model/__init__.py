"""Models, training, evaluation, export and the torch-free scorer.

Nothing heavy is imported here: ``liverank.model.data`` and ``liverank.model.scorer`` stay
usable without torch.
"""
