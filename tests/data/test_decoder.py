"""Tests of kmax_tf.data.tfrecord_decoder (and the label encodings it reads)."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kmax_tf import common
from kmax_tf.data import dataset_descriptors
from kmax_tf.data import label_codec
from kmax_tf.data import tfrecord_decoder

COCO = dataset_descriptors.get_dataset_descriptor('coco_panoptic')


def _jpeg(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=95)
  return buffer.getvalue()


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()


def _panoptic(height=6, width=8):
  panoptic = np.full((height, width), 120 * 256, np.int32)  # a stuff class
  panoptic[1:4, 2:5] = 3 * 256 + 1  # a thing instance
  panoptic[4:, 6:] = 0  # void
  return panoptic


def _decode(example: tf.train.Example, descriptor=COCO, source='shard-7.tfrecord', **kwargs):
  decoder = tfrecord_decoder.TFRecordDecoder(descriptor, **kwargs)
  decoded = decoder(tf.constant(example.SerializeToString()), tf.constant(source))
  return {k: v.numpy() for k, v in decoded.items()}


def _example_with(features_to_change: dict, **kwargs) -> tf.train.Example:
  image = np.full((6, 8, 3), 90, np.uint8)
  example = tfrecord_decoder.make_tf_example(_png(image), 'png', 'img_42', 6, 8, _panoptic(),
                                             **kwargs)
  for key, value in features_to_change.items():
    if value is None:
      del example.features.feature[key]
    elif isinstance(value, int):
      example.features.feature[key].int64_list.value[:] = [value]
    else:
      example.features.feature[key].bytes_list.value[:] = [value]
  return example


def _assert_fails(example, *expected_fragments, **kwargs):
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    _decode(example, **kwargs)
  for fragment in ('img_42',) + expected_fragments:
    assert fragment in error.value.message, error.value.message


def test_reference_records_decode_like_deeplab2(dl2_reference):
  reference = np.load(dl2_reference / 'data' / 'coco_val_eval_samples_257.npz')
  records = tf.data.TFRecordDataset(
      sorted(tf.io.gfile.glob(str(dl2_reference / 'data' / 'tfrecord' / 'val-*'))))
  decoder = tfrecord_decoder.TFRecordDecoder(COCO)
  count = 0
  for i, record in enumerate(records):
    decoded = decoder(record)
    assert decoded['image_name'].numpy().decode() == str(reference[f'tfrecord{i}/filename'])
    np.testing.assert_array_equal(decoded['label'].numpy()[:, :, 0],
                                  reference[f'tfrecord{i}/panoptic_int32'])
    # Same decoder as DeepLab2 (tf.io.decode_image); allow a libjpeg version drift.
    image_diff = np.abs(decoded['image'].numpy().astype(int) -
                        reference[f'tfrecord{i}/image_decoded_uint8_tf'].astype(int))
    assert image_diff.max() <= 3
    assert decoded['height'] == reference[f'tfrecord{i}/panoptic_int32'].shape[0]
    count += 1
  assert count == 2


@pytest.mark.parametrize('label_format', ['raw', 'panoptic_png'])
def test_both_label_formats_round_trip(label_format):
  image = (np.arange(6 * 8 * 3).reshape(6, 8, 3) % 251).astype(np.uint8)
  panoptic = _panoptic()
  example = tfrecord_decoder.make_tf_example(_png(image), 'png', 'img_42', 6, 8, panoptic,
                                             label_format=label_format)
  assert (example.features.feature[common.KEY_LABEL_FORMAT].bytes_list.value[0].decode() ==
          label_format)
  decoded = _decode(example)
  np.testing.assert_array_equal(decoded['image'], image)  # PNG is lossless
  np.testing.assert_array_equal(decoded['label'][:, :, 0], panoptic)
  assert decoded['label'].dtype == np.int32
  assert decoded['image_name'] == b'img_42'
  assert (decoded['height'], decoded['width']) == (6, 8)


def test_label_codec_numpy_round_trip_and_rgb_convention():
  panoptic = np.array([[0, 1, 255, 256], [65535, 65536, 300000, 16777215]], np.int32)
  assert np.array_equal(label_codec.decode_label(label_codec.encode_raw(panoptic), 'raw', 2, 4),
                        panoptic)
  png = label_codec.encode_panoptic_png(panoptic)
  assert np.array_equal(label_codec.decode_label(png, 'panoptic_png', 2, 4), panoptic)
  rgb = np.asarray(Image.open(io.BytesIO(png)))
  # id = R + 256 G + 65536 B, e.g. 300000 = 224 + 256 * 147 + 65536 * 4.
  assert rgb[1, 2].tolist() == [224, 147, 4]
  assert label_codec.encode_raw(np.array([[258]])) == b'\x02\x01\x00\x00'  # little-endian
  with pytest.raises(ValueError, match='exceeds'):
    label_codec.encode_panoptic_png(np.array([[2**24]]))
  with pytest.raises(ValueError, match='>= 0'):
    label_codec.encode_raw(np.array([[-1]]))
  with pytest.raises(ValueError, match='Unknown label format'):
    label_codec.encode_label(panoptic, 'png16')


def test_decodes_without_label_when_not_requested():
  example = _example_with({common.KEY_ENCODED_LABEL: None, common.KEY_LABEL_FORMAT: None})
  decoded = _decode(example, decode_groundtruth_label=False)
  assert 'label' not in decoded
  assert decoded['image'].shape == (6, 8, 3)


def test_error_missing_image():
  _assert_fails(_example_with({common.KEY_ENCODED_IMAGE: None}), 'Missing or empty image',
                'shard-7.tfrecord')


def test_error_unreadable_image():
  _assert_fails(_example_with({common.KEY_ENCODED_IMAGE: b'this is not an image'}),
                'Unreadable image')


def test_error_truncated_jpeg():
  jpeg = _jpeg(np.full((6, 8, 3), 90, np.uint8))
  _assert_fails(_example_with({common.KEY_ENCODED_IMAGE: jpeg[:len(jpeg) // 2]}),
                'Unreadable image')


def test_error_declared_size_differs_from_image():
  _assert_fails(_example_with({common.KEY_IMAGE_HEIGHT: 7}), 'Decoded image')


@pytest.mark.parametrize('label_format', ['raw', 'panoptic_png'])
def test_error_label_size_differs_from_image(label_format):
  wrong = label_codec.encode_label(np.zeros((5, 8), np.int32), label_format)
  _assert_fails(_example_with({common.KEY_ENCODED_LABEL: wrong}, label_format=label_format),
                'label', '6')


def test_error_missing_label():
  _assert_fails(_example_with({common.KEY_ENCODED_LABEL: None}),
                'image/segmentation/class/encoded')


def test_error_unknown_label_format():
  _assert_fails(_example_with({common.KEY_LABEL_FORMAT: b'png'}), 'Unknown label format')


def test_error_unknown_class():
  panoptic = _panoptic()
  panoptic[0, 0] = 134 * 256 + 2  # COCO has classes 0..133
  example = tfrecord_decoder.make_tf_example(_png(np.zeros((6, 8, 3), np.uint8)), 'png',
                                             'img_42', 6, 8, panoptic)
  _assert_fails(example, 'class outside', str(134 * 256 + 2))
  # Without a descriptor there is no class check.
  assert _decode(example, descriptor=None)['label'][0, 0, 0] == 134 * 256 + 2


def test_ignore_label_above_num_classes_is_accepted():
  cityscapes = dataset_descriptors.get_dataset_descriptor('cityscapes_panoptic')
  panoptic = np.full((6, 8), 255 * 1000, np.int32)  # Cityscapes void: class 255 >= 19
  panoptic[:2] = 11 * 1000 + 4
  example = tfrecord_decoder.make_tf_example(_png(np.zeros((6, 8, 3), np.uint8)), 'png',
                                             'img_42', 6, 8, panoptic)
  np.testing.assert_array_equal(_decode(example, descriptor=cityscapes)['label'][:, :, 0],
                                panoptic)


def test_make_tf_example_rejects_bad_input(tmp_path):
  with pytest.raises(ValueError, match='img_42.*label is 5x8'):
    tfrecord_decoder.make_tf_example(b'', 'png', 'img_42', 6, 8, np.zeros((5, 8), np.int32))
  with pytest.raises(ValueError, match='unsupported image format'):
    tfrecord_decoder.make_tf_example(b'', 'gif', 'img_42', 6, 8)
  path = tmp_path / 'one.tfrecord'
  assert tfrecord_decoder.write_tfrecord(str(path), [_example_with({})]) == 1
  with pytest.raises(FileExistsError):
    tfrecord_decoder.write_tfrecord(str(path), [_example_with({})])
  assert [p.name for p in tmp_path.iterdir()] == ['one.tfrecord']  # no temp files left


def test_error_raw_label_with_odd_byte_count():
  _assert_fails(_example_with({common.KEY_ENCODED_LABEL: b'\x00' * 47}), 'Raw label', '47')


def test_error_panoptic_png_label_not_a_png():
  _assert_fails(_example_with({common.KEY_ENCODED_LABEL: b'garbage bytes'},
                              label_format='panoptic_png'), 'is not a PNG')
