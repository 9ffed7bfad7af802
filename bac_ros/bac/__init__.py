"""BAC: Block-wise Adaptive Caching (ACS + BUA), cached execution, calibration."""
