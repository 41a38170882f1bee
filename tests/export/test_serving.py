"""SavedModel export: signatures, fresh-process numerics, device freedom, layout."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from kmax_tf import common
from kmax_tf.export import serving
from tests.export import conftest
from tests.export import tiny_config

pytestmark = pytest.mark.slow  # One model build + a CLI export per session (~2 min).


@pytest.fixture(scope='module')
def fresh_process_outputs(export_case, photos, tmp_path_factory):
  """Outputs of the SavedModel run by tests/export/run_saved_model.py in a new process."""
  folder = tmp_path_factory.mktemp('fresh')
  gray = np.asarray(photos[1][:150, :200].mean(axis=-1), np.uint8)
  encoded = [conftest.png_bytes(photos[2]), conftest.png_bytes(gray),
             tf.io.encode_jpeg(photos[0]).numpy()]
  inputs = {'batch': np.stack(photos[:2]), 'single': photos[2]}
  inputs.update({f'encoded_{k}': np.frombuffer(data, np.uint8) for k, data in enumerate(encoded)})
  np.savez(folder / 'inputs.npz', **inputs)
  result = conftest.run_python(['tests/export/run_saved_model.py', export_case.version_dir,
                                folder / 'inputs.npz', folder / 'outputs.npz'])
  assert result.returncode == 0, result.stderr[-3000:]
  return dict(np.load(folder / 'outputs.npz')), inputs, gray


def test_cli_writes_a_numbered_version(export_case):
  assert sorted(os.listdir(export_case.base_path)) == ['1']
  assert (export_case.version_dir / 'saved_model.pb').is_file()
  assert str(export_case.version_dir) in export_case.export_stdout


def test_fresh_process_maps_equal_in_process_evaluation(export_case, fresh_process_outputs, photos):
  outputs, inputs, gray = fresh_process_outputs
  model, config = export_case.module.model, export_case.config
  expected = [conftest.reference_maps(model, image, config) for image in photos]
  for index in range(2):
    for key, value in expected[index].items():
      np.testing.assert_array_equal(outputs[f'batch/{key}'][index], value, err_msg=key)
  for key, value in expected[2].items():
    np.testing.assert_array_equal(outputs[f'single/{key}'][0], value, err_msg=key)
  # The test means something: several segments, several classes.
  assert len(np.unique(outputs['batch/panoptic_pred'])) > 3
  np.testing.assert_array_equal(outputs['batch/image_size'], [[300, 400], [300, 400]])
  for key in serving.FLOAT_MAP_KEYS:
    assert outputs[f'batch/{key}'].dtype == np.float32
    assert outputs[f'batch/{key}'].shape == (2, 300, 400)


def test_image_bytes_signature_decodes_and_pads(export_case, fresh_process_outputs, photos):
  outputs, _, gray = fresh_process_outputs
  model, config = export_case.module.model, export_case.config
  sizes = [photos[2].shape[:2], gray.shape, photos[0].shape[:2]]
  np.testing.assert_array_equal(outputs['bytes/image_size'], sizes)
  panoptic = outputs['bytes/panoptic_pred']
  assert panoptic.shape == (3, 300, 451)
  jpeg_decoded = tf.io.decode_jpeg(tf.io.encode_jpeg(photos[0])).numpy()
  images = [photos[2], np.stack([gray] * 3, axis=-1), jpeg_decoded]
  for index, (image, (height, width)) in enumerate(zip(images, sizes)):
    expected = conftest.reference_maps(model, image, config)[common.PRED_PANOPTIC_KEY]
    np.testing.assert_array_equal(panoptic[index, :height, :width], expected)
    assert np.all(panoptic[index, height:] == -1) and np.all(panoptic[index, :, width:] == -1)


def test_saved_model_cli_lists_signatures(export_case):
  result = conftest.run_python(['-m', 'tensorflow.python.tools.saved_model_cli', 'show',
                                '--dir', export_case.version_dir, '--all'], timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  text = result.stdout
  for signature, input_name in (('serving_default', 'images'), ('image_tensor', 'images'),
                                ('image_bytes', 'image_bytes'), ('float_images', 'images')):
    block = text.split(f"signature_def['{signature}']:")[1].split('signature_def[')[0]
    assert f"inputs['{input_name}']" in block
    for key in serving.OUTPUT_KEYS:
      assert f"outputs['{key}']" in block, (signature, key)
  assert 'DT_UINT8' in text and 'DT_STRING' in text and 'DT_FLOAT' in text


def test_graph_is_not_pinned_to_a_device(export_case):
  proto = saved_model_pb2.SavedModel()
  proto.ParseFromString((export_case.version_dir / 'saved_model.pb').read_bytes())
  graph = proto.meta_graphs[0].graph_def
  pinned = [(function.signature.name, node.name, node.device)
            for function in graph.library.function for node in function.node_def
            if node.device and '_traced_save' not in function.signature.name
            and '_traced_restore' not in function.signature.name]
  assert not pinned, pinned[:5]
  assert len(graph.library.function) > 10


def test_metadata_is_stored_as_variable_and_asset(export_case):
  asset = json.loads((export_case.version_dir / 'assets' / serving.METADATA_ASSET).read_text())
  loaded = tf.saved_model.load(str(export_case.version_dir))
  variable = json.loads(loaded.kmax_metadata.numpy().decode())
  assert asset == variable
  assert variable['format'] == serving.METADATA_FORMAT
  assert variable['dataset'] == 'kmax_demo_panoptic'
  assert variable['class_names'][1:4] == ['disc', 'box', 'triangle']
  assert variable['thing_class_ids'] == [1, 2, 3]
  assert variable['panoptic_label_divisor'] == 256
  assert variable['resize']['crop_size'] == [tiny_config.CROP] * 2
  assert variable['checkpoint_path'] == export_case.checkpoint_prefix


def test_second_export_gets_the_next_version_and_never_overwrites(export_case, tmp_path):
  base = export_case.base_path
  assert serving.resolve_version_dir(base) == str(base / '2')
  with pytest.raises(ValueError, match='already exists and is not empty'):
    serving.resolve_version_dir(base / '1')
  assert serving.resolve_version_dir(tmp_path / 'new' / '7') == str(tmp_path / 'new' / '7')
  (tmp_path / 'plain').mkdir()
  (tmp_path / 'plain' / 'saved_model.pb').write_bytes(b'')
  with pytest.raises(ValueError, match='already holds a SavedModel'):
    serving.resolve_version_dir(tmp_path / 'plain')
  (tmp_path / 'base' / '3').mkdir(parents=True)
  (tmp_path / 'base' / 'notes').mkdir()
  assert serving.resolve_version_dir(tmp_path / 'base') == str(tmp_path / 'base' / '4')


def test_export_cli_errors_are_clear(export_case, tmp_path):
  result = conftest.run_python(['export_model.py', '--experiment_option_path=x.textproto',
                                '--output_path=/tmp/y'])
  assert result.returncode == 2 and 'missing --checkpoint_path' in result.stderr
  result = conftest.run_python(
      ['export_model.py', f'--experiment_option_path={tiny_config.BASE_CONFIG}',
       f'--checkpoint_path={export_case.checkpoint_prefix}',
       f'--output_path={export_case.version_dir}'] + conftest.override_flags())
  assert result.returncode == 2
  assert 'already exists and is not empty; refusing to overwrite' in result.stderr
  assert 'Traceback' not in result.stderr


def test_bad_tensor_inputs_are_clear_errors(export_case):
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'\[height, width, 3\]'):
    export_case.module.serve_images(np.zeros((5, 5), np.uint8))
  with pytest.raises(tf.errors.InvalidArgumentError, match='3 \\(RGB\\) channels'):
    export_case.module.serve_images(np.zeros((1, 5, 5, 4), np.uint8))
  with pytest.raises(tf.errors.InvalidArgumentError, match='Unknown image file format'):
    export_case.module.serve_image_bytes(tf.constant([b'not an image']))


def test_checkpoint_of_another_architecture_is_a_clear_error(export_case):
  overrides = tiny_config.OVERRIDES + ('model_options.max_deeplab.transformer_decoder_num_layers='
                                       '2,0,0',)
  with pytest.raises(ValueError, match='missing'):
    serving.build_serving_module(tiny_config.BASE_CONFIG, export_case.checkpoint_prefix,
                                 overrides=overrides)


def test_float_images_follow_the_predictor_rule(export_case, photos):
  """Floats in [0, 255] give the uint8 maps; [0, 1] or out-of-range floats are clear errors."""
  loaded = tf.saved_model.load(str(export_case.version_dir))
  as_uint8 = loaded.signatures['serving_default']
  as_float = loaded.signatures['float_images']
  photo = photos[2][:120, :160]
  expected = as_uint8(images=tf.constant(photo))
  got = as_float(images=tf.constant(photo.astype(np.float32)))
  for key in serving.OUTPUT_KEYS:
    np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'looks scaled to \[0, 1\]'):
    as_float(images=tf.constant(photo.astype(np.float32) / 255.0))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'must hold values in \[0, 255\]'):
    as_float(images=tf.constant(photo.astype(np.float32) + 200.0))
  with pytest.raises(tf.errors.InvalidArgumentError, match='NaN or infinite'):
    as_float(images=tf.fill([8, 8, 3], float('nan')))
  # The uint8 signature refuses a float tensor outright (TensorFlow's dtype check).
  with pytest.raises(tf.errors.InvalidArgumentError, match='expected to be a uint8 tensor'):
    as_uint8(images=tf.constant(photo.astype(np.float32)))
