"""The planning stage, everything `automedsam_plan_and_preprocess` does (nnU-Net: experiment_planning/ and
preprocessing/): `fingerprint` measures a raw dataset, `planner` turns the fingerprint into plans.json, `splits`
draws the few-shot labelled samples and their folds, `preprocessing` writes the 2D samples (and their `augmentation`
views) and embeds them, and `plan_and_preprocess` runs them in order.

This file imports nothing, so importing the planner (`automedsam.planning.planner`) stays cheap.
"""
