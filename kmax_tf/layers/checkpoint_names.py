"""The one place where layers attach children under computed attribute names.

DeepLab2 checkpoints are restored through TensorFlow's object graph: a
variable's key is the chain of attribute names from the checkpoint root, e.g.
`encoder/_stage2/_block1/_conv1_bn_act/_batch_norm/gamma`. Most children in
kmax_tf are plain attributes (`self._conv = ...`), which grep finds. Some names
are numbered (`_block3`, `_resized_conv_bn2`) and must be built at run time;
they are attached here, so the resulting checkpoint paths stay documented:

  BlockGroup:   <group>/_block{i}/...            residual block i (1-based)
                <group>/_block{i}_transformer/... optional transformer layer
  ResizedFuse:  <fuse>/_strided_conv_bn{i}/...    input i fused by a stride-2 conv
                <fuse>/_resized_conv_bn{i}/...    input i fused by 1x1 conv + resize
  StackedConv2DSame: <stack>/_conv{i}[_bn][_act]/...
  AxialResNet:  encoder/_stage{k}/...             ResNet stage k = 2..5
"""

from typing import Optional


def block_attribute(index: int) -> str:
  """Attribute of the residual block `index` (0-based) of a block group."""
  return f'_block{index + 1}'


def transformer_attribute(index: int) -> str:
  """Attribute of the transformer layer following residual block `index`."""
  return f'_block{index + 1}_transformer'


def stacked_conv_attribute(index: int, use_bn: bool, activation: Optional[str]) -> str:
  """Attribute of conv `index` (0-based) in a stack: `_conv{i}`, `_bn`, `_act` suffixes."""
  name = f'_conv{index + 1}'
  if use_bn:
    name += '_bn'
  if activation is not None and activation.lower() not in ('none', 'linear'):
    name += '_act'
  return name


def layer_name(attribute: str) -> str:
  """Keras layer name for a private attribute: DeepLab2 drops the underscore."""
  if not attribute.startswith('_'):
    raise ValueError(f'checkpoint attribute must start with "_", got {attribute!r}')
  return attribute[1:]


def set_checkpoint_child(owner, attribute: str, child) -> None:
  """Attaches `child` as `owner.<attribute>`, which becomes a checkpoint path component.

  Args:
    owner: the Keras layer or model that owns the child.
    attribute: the attribute name, exactly as it appears in checkpoint keys.
    child: a Keras layer, or None (tracked as nothing, like DeepLab2).

  Raises:
    ValueError: if `owner` already has that attribute (a name collision would
      silently change the checkpoint contract).
  """
  if hasattr(owner, attribute):
    raise ValueError(f'{type(owner).__name__} already has attribute {attribute!r}')
  setattr(owner, attribute, child)
