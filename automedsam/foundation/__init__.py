"""Frozen foundation models (LiteMedSAM, MedSAM, SAM) behind one interface, and their embedding cache.

Import what you need from its module: `base.FoundationModel` (the interface), `registry.build_foundation_model` and
`registry.FOUNDATION_MODELS`, `cache.EmbeddingCache`, `frame.Frame`. This file imports nothing, so that reading
the registry (as the planner does) loads neither torch nor segment_anything.
"""
