"""Tests for kmax_tf.model.pixel_encoder.convnext.

Contract: parameter counts equal DeepLab2's golden numbers (its convnext_test),
and the `encoder/` checkpoint keys and shapes equal the DeepLab2 manifests.

Numerics: the shared forward references are R50-only, so ConvNeXt-T is checked
against an independent float64 numpy implementation written below (stem with
downstream padding, all four stages, every downsampling layer, the GeLU `res`
endpoints), with the reference weight rule for every variable.
"""

import gc

import numpy as np
import pytest
import tensorflow as tf
from scipy import special

from kmax_tf.keras_setup import keras
from kmax_tf.layers import drop_path
from kmax_tf.model import checkpoint_loading
from kmax_tf.model.pixel_encoder import convnext
from tests.helpers import dl2_checkpoint

# DeepLab2 model/pixel_encoder/convnext_test.py (trainable parameters, no head).
GOLDEN_NUM_PARAMS = {
    'tiny': 27_818_592,
    'small': 49_453_152,
    'base': 87_564_416,
    'large': 196_227_264,
}
_ENCODER_PREFIX = 'encoder/'


def _manifest_encoder_shapes(reference, manifest_name):
  rows = dl2_checkpoint.read_manifest(reference / 'manifests' / f'{manifest_name}.tsv')
  return {k: s for k, s, _ in rows if k.startswith(_ENCODER_PREFIX)}


def _encoder_shapes(encoder):
  variables = checkpoint_loading.object_graph_variables(tf.train.Checkpoint(encoder=encoder))
  return {k: tuple(v.shape.as_list()) for k, v in variables.items()}


@pytest.mark.parametrize('variant', ['tiny', 'small', 'base', 'large'])
def test_param_count_and_manifest_keys(variant, dl2_reference):
  keras.backend.clear_session()
  encoder = convnext.build_convnext_encoder(
      variant, drop_path_keep_prob=0.7, input_shape=(65, 65, 3))
  assert encoder.name == f'convnext_{variant}'
  num_params = sum(int(np.prod(w.shape)) for w in encoder.trainable_weights)
  assert num_params == GOLDEN_NUM_PARAMS[variant]
  # ConvNeXt has no BatchNorm: no non-trainable weights at all.
  assert not encoder.non_trainable_weights

  shapes = _encoder_shapes(encoder)
  for dataset in ('coco', 'cityscapes'):
    manifest = _manifest_encoder_shapes(dl2_reference, f'{dataset}_convnext_{variant}')
    assert shapes == manifest, (
        sorted(set(shapes) ^ set(manifest))[:10],
        [k for k in shapes if k in manifest and shapes[k] != manifest[k]][:10])
  if variant == 'large':
    assert shapes == _manifest_encoder_shapes(dl2_reference, 'ade20k_convnext_large_res1281')
  del encoder
  keras.backend.clear_session()
  gc.collect()


@pytest.mark.parametrize('height,width,expected', [
    # DeepLab2's test shapes at 224 (stride 4, 4, 8, 16, 32).
    (224, 224, [(56, 56), (56, 56), (28, 28), (14, 14), (7, 7)]),
    # Odd crops: the downstream zero padding gives ceil(size / stride).
    (65, 65, [(17, 17), (17, 17), (9, 9), (5, 5), (3, 3)]),
    (33, 45, [(9, 12), (9, 12), (5, 6), (3, 3), (2, 2)]),
])
def test_endpoint_shapes(height, width, expected):
  encoder = convnext.build_convnext_encoder('convnext_tiny', input_shape=(height, width, 3))
  endpoints = encoder(tf.zeros([2, height, width, 3]))
  dims = [96, 96, 192, 384, 768]
  assert sorted(endpoints) == sorted([f'stage{i}' for i in range(1, 6)] +
                                     [f'res{i}' for i in range(1, 6)])
  for i in range(5):
    want = (2,) + expected[i] + (dims[i],)
    assert tuple(endpoints[f'stage{i + 1}'].shape) == want
    assert tuple(endpoints[f'res{i + 1}'].shape) == want


def test_drop_path_schedule_and_layers():
  encoder = convnext.build_convnext_encoder('tiny', drop_path_keep_prob=0.7)
  blocks = [block for stage in encoder.stages for block in stage.layers]
  assert len(blocks) == 18
  # First block keeps everything (identity layer), then linear in float32 down to 0.7.
  assert isinstance(blocks[0].drop_path, keras.layers.Activation)
  keep_probs = [block.drop_path._drop_path_keep_prob for block in blocks[1:]]
  assert all(isinstance(block.drop_path, drop_path.DropPath) for block in blocks[1:])
  expected = np.linspace(1.0, 0.7, 18, dtype=np.float32)[1:]
  np.testing.assert_allclose(keep_probs, expected, rtol=0, atol=1e-7)
  assert keep_probs[-1] == pytest.approx(0.7, abs=1e-7)
  assert convnext.drop_path_keep_probs(1.0, 5) == (1.0,) * 5


def test_unknown_variant_and_bad_keep_prob():
  with pytest.raises(ValueError, match='Unknown ConvNeXt variant'):
    convnext.build_convnext_encoder('convnext_huge')
  with pytest.raises(ValueError, match='drop_path_keep_prob'):
    convnext.build_convnext_encoder('tiny', drop_path_keep_prob=0.0)


def test_block_drop_path_in_training_only():
  """A block whose residual is (almost surely) dropped is the identity in training only."""
  block = convnext.ConvNeXtBlock(8, drop_path_keep_prob=1e-6, layer_scale_init_value=1.0)
  inputs = tf.random.uniform([3, 5, 6, 8], -1, 1, seed=1)
  np.testing.assert_array_equal(block(inputs, training=True).numpy(), inputs.numpy())
  assert np.abs(block(inputs, training=False).numpy() - inputs.numpy()).max() > 1e-3
  assert [w.name.split('/')[-1] for w in block.weights].count('layer_scale:0') == 1


# ---------------------------------------------------------------------------
# Independent numpy ConvNeXt (float64), from the checkpoint-key weights.


def _np_layer_norm(x, gamma, beta, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _np_gelu(x):
  return 0.5 * x * (1.0 + special.erf(x / np.sqrt(2.0)))


def _np_patchify_conv(x, kernel, bias):
  """Conv with kernel size == stride, VALID padding. x [B,H,W,C], kernel [k,k,C,O]."""
  k = kernel.shape[0]
  b, h, w, c = x.shape
  oh, ow = h // k, w // k
  patches = x[:, :oh * k, :ow * k].reshape(b, oh, k, ow, k, c)
  return np.einsum('bikjlc,klco->bijo', patches, kernel) + bias


def _np_depthwise7(x, kernel, bias):
  """'same' 7x7 per-channel conv. kernel [7,7,1,C]."""
  _, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
  out = np.zeros_like(x)
  for i in range(7):
    for j in range(7):
      out += padded[:, i:i + h, j:j + w, :] * kernel[i, j, 0, :]
  return out + bias


def _np_convnext(images, weights, depths, pad_before_norm=True):
  """Endpoints of DeepLab2's kMaX ConvNeXt (downstream padding) in float64.

  pad_before_norm=False is a deliberately wrong variant (norm, then pad) used to
  show that the comparison is sensitive to the padding order.
  """
  def w(key):
    return weights[_ENCODER_PREFIX + key].astype(np.float64)

  endpoints = {}
  x = images.astype(np.float64)
  for i in range(4):
    prefix = f'downsample_layers/{i}/'
    if i == 0:
      x = np.pad(x, ((0, 0), (1, 2), (1, 2), (0, 0)))
      x = _np_patchify_conv(x, w(prefix + 'layer_with_weights-0/kernel'),
                            w(prefix + 'layer_with_weights-0/bias'))
      x = _np_layer_norm(x, w(prefix + 'layer_with_weights-1/gamma'),
                         w(prefix + 'layer_with_weights-1/beta'))
      endpoints['stage1'] = x
    else:
      pad = ((0, 0), (0, 1), (0, 1), (0, 0))
      x = np.pad(x, pad) if pad_before_norm else x
      x = _np_layer_norm(x, w(prefix + 'layer_with_weights-0/gamma'),
                         w(prefix + 'layer_with_weights-0/beta'))
      x = x if pad_before_norm else np.pad(x, pad)
      x = _np_patchify_conv(x, w(prefix + 'layer_with_weights-1/kernel'),
                            w(prefix + 'layer_with_weights-1/bias'))
    for j in range(depths[i]):
      block = f'stages/{i}/layer_with_weights-{j}/'
      y = _np_depthwise7(x, w(block + 'depthwise_conv/kernel'), w(block + 'depthwise_conv/bias'))
      y = _np_layer_norm(y, w(block + 'norm/gamma'), w(block + 'norm/beta'))
      y = y @ w(block + 'pointwise_conv1/kernel') + w(block + 'pointwise_conv1/bias')
      y = _np_gelu(y)
      y = y @ w(block + 'pointwise_conv2/kernel') + w(block + 'pointwise_conv2/bias')
      x = x + w(block + 'layer_scale') * y
    endpoints[f'stage{i + 2}'] = x
  for i in range(1, 6):
    endpoints[f'res{i}'] = _np_gelu(endpoints[f'stage{i}'])
  return endpoints


def test_convnext_tiny_matches_numpy_reference(dl2_reference, tmp_path):
  keras.backend.clear_session()
  height, width = 33, 45  # Odd, non-square: exercises every padding and the H/W order.
  encoder = convnext.build_convnext_encoder(
      'tiny', drop_path_keep_prob=0.7, input_shape=(height, width, 3))
  rows = [r for r in dl2_checkpoint.read_manifest(
      dl2_reference / 'manifests' / 'coco_convnext_tiny.tsv') if r[0].startswith(_ENCODER_PREFIX)]
  values = dl2_checkpoint.manifest_values(rows)
  prefix = dl2_checkpoint.write_checkpoint(values, tmp_path / 'ckpt')
  summary = checkpoint_loading.load_deeplab2_checkpoint({'encoder': encoder}, prefix)
  assert summary.kind == 'backbone' and summary.num_variables == len(rows)

  images = np.random.default_rng(0).uniform(-1, 1, (2, height, width, 3)).astype(np.float32)
  got = encoder(tf.constant(images), training=False)
  want = _np_convnext(images, values, depths=(3, 3, 9, 3))
  for key in [f'stage{i}' for i in range(1, 6)] + [f'res{i}' for i in range(1, 6)]:
    ref = want[key]
    err = np.abs(got[key].numpy() - ref).max() / np.abs(ref).max()
    assert err < 1e-5, f'{key}: relative error {err:.2e}'
  # Padding after the downsampling norm (zeros instead of LN's beta at the
  # padded border) is a visible difference, so the check above has teeth.
  wrong = _np_convnext(images, values, depths=(3, 3, 9, 3), pad_before_norm=False)
  err = np.abs(got['stage5'].numpy() - wrong['stage5']).max() / np.abs(wrong['stage5']).max()
  assert err > 1e-2
