"""ConvNeXt pixel encoders (tiny/small/base/large/xlarge) for kMaX-DeepLab.

ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022) as DeepLab2 uses it
for the kMaX meta architecture. The Keras attribute names and container types
(lists of `Sequential`s, `keras.Model` blocks) are those of DeepLab2, because a
TensorFlow checkpoint is matched through them: the checkpoint keys below
`encoder/` are e.g.

  downsample_layers/0/layer_with_weights-0/kernel          stem 4x4/4 conv
  downsample_layers/{1,2,3}/layer_with_weights-0/gamma     LayerNorm
  stages/{i}/layer_with_weights-{j}/depthwise_conv/kernel  [7, 7, 1, dim]
  stages/{i}/layer_with_weights-{j}/layer_scale            [1, 1, 1, dim]

Numerics follow DeepLab2: LayerNorm epsilon 1e-6, exact (erf) GeLU, per-block
layer scale, drop path with keep probabilities decreasing linearly from 1.0 at
the first block to `drop_path_keep_prob` at the last one, and the downstream
zero padding (1 top/left + 2 bottom/right before the stem, 1 bottom/right before
each downsampling layer) so that odd crops such as 641 give ceil(H / stride)
outputs. The padding comes before the downsampling LayerNorm, so padded pixels
leave that norm as its `beta`, not zero: this is what DeepLab2 computes.
"""

from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf

from kmax_tf.keras_setup import keras
from kmax_tf.layers import activations
from kmax_tf.layers import drop_path
from kmax_tf.layers import fused_inference
from kmax_tf.layers import recompute

# Variant -> (blocks per stage, channels per stage).
CONVNEXT_VARIANTS: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {
    'tiny': ((3, 3, 9, 3), (96, 192, 384, 768)),
    'small': ((3, 3, 27, 3), (96, 192, 384, 768)),
    'base': ((3, 3, 27, 3), (128, 256, 512, 1024)),
    'large': ((3, 3, 27, 3), (192, 384, 768, 1536)),
    'xlarge': ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}

_LAYER_NORM_EPSILON = 1e-6
_DEFAULT_LAYER_SCALE_INIT = 1e-6


def _conv2d(filters: int, kernel_size: int, **kwargs) -> keras.layers.Conv2D:
  return keras.layers.Conv2D(
      filters, kernel_size,
      kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
      bias_initializer='zeros', **kwargs)


def _dense(units: int) -> keras.layers.Dense:
  return keras.layers.Dense(
      units,
      kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
      bias_initializer='zeros')


def _layer_norm() -> keras.layers.LayerNormalization:
  return fused_inference.LayerNormalization(epsilon=_LAYER_NORM_EPSILON)


def _drop_path_or_identity(keep_prob: float) -> keras.layers.Layer:
  """A drop-path layer, or a weightless identity when nothing is dropped."""
  if keep_prob < 1.0:
    return drop_path.DropPath(keep_prob)
  return keras.layers.Activation('linear')


def drop_path_keep_probs(final_keep_prob: float, num_blocks: int) -> Tuple[float, ...]:
  """Per-block keep probabilities, linear from 1.0 to `final_keep_prob`.

  Computed in float32 with `tf.linspace`, so the values are bit-identical to
  DeepLab2's (the first block always gets exactly 1.0).
  """
  rates = tf.linspace(1.0, float(final_keep_prob), num_blocks).numpy()
  return tuple(float(r) for r in rates)


class ConvNeXtBlock(keras.Model):
  """One ConvNeXt block: x + drop_path(layer_scale * MLP(LN(dwconv7x7(x)))).

  Input and output: float32 [B, H, W, dim].
  """

  def __init__(self, dim: int, drop_path_keep_prob: float = 1.0,
               layer_scale_init_value: float = _DEFAULT_LAYER_SCALE_INIT, **kwargs):
    super().__init__(**kwargs)
    # A grouped Conv2D (not DepthwiseConv2D): kernel [7, 7, 1, dim] as in DeepLab2.
    self.depthwise_conv = _conv2d(dim, 7, padding='same', groups=dim)
    self.norm = _layer_norm()
    self.pointwise_conv1 = _dense(4 * dim)
    self.act = keras.layers.Activation(activations.get_activation('gelu'))
    self.pointwise_conv2 = _dense(dim)
    if layer_scale_init_value > 0:
      # Checkpoint key `layer_scale`; the attribute name `gamma` is DeepLab2's.
      self.gamma = self.add_weight(
          name='layer_scale', shape=(1, 1, 1, dim),
          initializer=keras.initializers.Constant(layer_scale_init_value))
    else:
      self.gamma = None
    self.drop_path = _drop_path_or_identity(drop_path_keep_prob)

  def _residual(self, inputs):
    residual = self.depthwise_conv(inputs)
    residual = self.norm(residual)
    residual = self.pointwise_conv1(residual)
    residual = self.act(residual)
    residual = self.pointwise_conv2(residual)
    if self.gamma is not None:
      residual = self.gamma * residual
    return residual

  def call(self, inputs, training=None):
    # Drop path stays outside the recomputed part: its random draw must happen once.
    residual = recompute.call(self._residual, inputs)
    return inputs + self.drop_path(residual, training=training)


class ConvNeXtEncoder(keras.Model):
  """ConvNeXt backbone returning DeepLab2's pixel-encoder endpoints.

  Call: images float32 [B, H, W, 3] (already normalised to [-1, 1] by the
  meta architecture) -> dict of float32 tensors:
    'stage1': stem output, [B, ceil(H/4), ceil(W/4), dims[0]] (with downstream padding);
    'stage{k}' for k = 2..5: output of ConvNeXt stage k-1 at stride 4, 8, 16, 32;
    'res{k}' = gelu('stage{k}') for k = 1..5.
  """

  def __init__(self, depths: Sequence[int], dims: Sequence[int], *,
               drop_path_keep_prob: float = 1.0,
               layer_scale_init_value: float = _DEFAULT_LAYER_SCALE_INIT,
               zero_padding_for_downstream: bool = True,
               name: str = 'convnext'):
    super().__init__(name=name)
    if len(depths) != 4 or len(dims) != 4:
      raise ValueError(f'ConvNeXt needs 4 stages, got depths={depths}, dims={dims}.')
    if not 0.0 < drop_path_keep_prob <= 1.0:
      raise ValueError(f'drop_path_keep_prob must be in (0, 1], got {drop_path_keep_prob}.')

    # Index 0 is the stem; 1..3 reduce resolution in front of stages 1..3.
    self.downsample_layers = []
    stem_layers = [_conv2d(dims[0], 4, strides=4), _layer_norm()]
    if zero_padding_for_downstream:
      stem_layers.insert(0, keras.layers.ZeroPadding2D(padding=((1, 2), (1, 2))))
    self.downsample_layers.append(keras.Sequential(stem_layers, name='stem'))
    for i in range(1, 4):
      layers = [_layer_norm(), _conv2d(dims[i], 2, strides=2)]
      if zero_padding_for_downstream:
        layers.insert(0, keras.layers.ZeroPadding2D(padding=((0, 1), (0, 1))))
      self.downsample_layers.append(
          keras.Sequential(layers, name=f'downsampling_block_{i - 1}'))

    keep_probs = drop_path_keep_probs(drop_path_keep_prob, sum(depths))
    self.stages = []
    first_block = 0
    for i, (depth, dim) in enumerate(zip(depths, dims)):
      blocks = [
          ConvNeXtBlock(dim, drop_path_keep_prob=keep_probs[first_block + j],
                        layer_scale_init_value=layer_scale_init_value,
                        name=f'convnext_block_{i}_{j}')
          for j in range(depth)]
      self.stages.append(keras.Sequential(blocks, name=f'convnext_stage_{i}'))
      first_block += depth

    self._act = keras.layers.Activation(activations.get_activation('gelu'))

  def call(self, inputs, training=None) -> Dict[str, tf.Tensor]:
    endpoints = {}
    features = inputs
    for i in range(4):
      features = self.downsample_layers[i](features, training=training)
      if i == 0:
        endpoints['stage1'] = features
        endpoints['res1'] = self._act(features)
      features = self.stages[i](features, training=training)
      endpoints[f'stage{i + 2}'] = features
      endpoints[f'res{i + 2}'] = self._act(features)
    return endpoints


def canonical_variant(name: str) -> str:
  """'kmax_convnext_tiny' / 'convnext_tiny' / 'tiny' -> 'tiny' (ValueError if unknown)."""
  variant = name.lower()
  for prefix in ('kmax_', 'convnext_'):
    if variant.startswith(prefix):
      variant = variant[len(prefix):]
  if variant not in CONVNEXT_VARIANTS:
    raise ValueError(f'Unknown ConvNeXt variant {name!r}; expected one of '
                     f'{sorted(CONVNEXT_VARIANTS)} (optionally prefixed by "convnext_").')
  return variant


def build_convnext_encoder(variant: str, *,
                           drop_path_keep_prob: float = 1.0,
                           input_shape: Optional[Sequence[int]] = None,
                           pretrained_weights_path: Optional[str] = None,
                           norm_layer=None,
                           zero_padding_for_downstream: bool = True,
                           layer_scale_init_value: float = _DEFAULT_LAYER_SCALE_INIT,
                           ) -> ConvNeXtEncoder:
  """Builds a ConvNeXt pixel encoder the way DeepLab2's kMaX builder does.

  Args:
    variant: 'tiny', 'small', 'base', 'large' or 'xlarge' (a 'convnext_' or
      'kmax_convnext_' prefix is accepted).
    drop_path_keep_prob: keep probability of the last block (config
      `model_options.backbone.drop_path_keep_prob`).
    input_shape: [H, W, 3]; when given the encoder is built on a symbolic input
      of that shape (DeepLab2 uses the train crop). Variable shapes do not
      depend on it.
    pretrained_weights_path: optional ConvNeXt `pretrained_weights` checkpoint
      (keys rooted at the encoder, as Keras `save_weights` writes them); needs
      `input_shape`. Restored strictly with
      `kmax_tf.model.checkpoint_loading.load_deeplab2_checkpoint`.
    norm_layer: ignored (ConvNeXt uses LayerNorm); accepted so that every pixel
      encoder builder takes the same arguments.
    zero_padding_for_downstream: DeepLab2's kMaX uses True.
    layer_scale_init_value: initial layer scale (<= 0 disables it).

  Returns:
    A ConvNeXtEncoder named 'convnext_<variant>'.
  """
  del norm_layer
  variant = canonical_variant(variant)
  depths, dims = CONVNEXT_VARIANTS[variant]
  encoder = ConvNeXtEncoder(
      depths, dims, drop_path_keep_prob=drop_path_keep_prob,
      layer_scale_init_value=layer_scale_init_value,
      zero_padding_for_downstream=zero_padding_for_downstream,
      name=f'convnext_{variant}')
  if input_shape is not None:
    encoder(keras.Input(shape=tuple(input_shape)))
  if pretrained_weights_path:
    if input_shape is None:
      raise ValueError('pretrained_weights_path needs input_shape, to build the encoder first.')
    from kmax_tf.model import checkpoint_loading  # (avoids an import cycle)
    checkpoint_loading.load_deeplab2_checkpoint(
        {'encoder': encoder}, pretrained_weights_path, kind='pretrained_weights')
  return encoder
