"""Pixel encoders (backbones) of kMaX-DeepLab: (axial-)ResNet-50 here, ConvNeXt beside it."""
