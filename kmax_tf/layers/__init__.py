"""Building blocks shared by the kMaX-DeepLab model, with DeepLab2's checkpoint names.

convolutions (Conv2DSame, Conv1D, ...), axial_layers / positional_encodings
(axial attention), axial_blocks (residual blocks), axial_block_groups
(BlockGroup), resized_fuse, stems, drop_path, activations, resize, and
checkpoint_names (the computed attribute names of the checkpoint contract).
"""
