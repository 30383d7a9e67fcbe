"""INT8: quantized parameters and their forward pass, calibration, the quantize command's
work, LiteRT files."""
