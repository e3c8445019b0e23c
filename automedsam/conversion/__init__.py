"""Importers that write raw datasets (nnU-Net v2 layout): HC18, ACDC, any image/mask folder, synthetic demo data."""
from automedsam.conversion.acdc import convert_acdc
from automedsam.conversion.folder import convert_folder
from automedsam.conversion.hc18 import convert_hc18
from automedsam.conversion.synthetic import make_synthetic_dataset

__all__ = ["convert_acdc", "convert_folder", "convert_hc18", "make_synthetic_dataset"]
