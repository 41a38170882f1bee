"""LiteRT (TFLite) and ONNX exports: CLI, fresh-process parity with the SavedModel, Predictor."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from kmax_tf.export import portable
from kmax_tf.export import predictor as predictor_lib
from kmax_tf.export import runtimes
from kmax_tf.export import serving
from kmax_tf.keras_setup import keras
from tests.export import conftest
from tests.export import tiny_config

pytestmark = pytest.mark.slow  # A model build, four parallel CLI exports and a fresh run (~2 min).

# (format, quantization) of every portable export the tests make.
VARIANTS = (('tflite', 'none'), ('tflite', 'float16'), ('tflite', 'dynamic_int8'), ('onnx', 'none'))


@dataclasses.dataclass
class PortableCase:
  checkpoint_prefix: str
  saved_model_dir: pathlib.Path
  files: dict            # (format, quantization) -> exported model file
  stdouts: dict


def _export_command(prefix, output_path, export_format, quantization):
  return [sys.executable, 'export_model.py',
          f'--experiment_option_path={tiny_config.BASE_CONFIG}', f'--checkpoint_path={prefix}',
          f'--output_path={output_path}', f'--format={export_format}',
          f'--quantization={quantization}'] + [
              f'--config_override={override}' for override in tiny_config.SLIM_OVERRIDES]


@pytest.fixture(scope='session')
def portable_case(tmp_path_factory) -> PortableCase:
  """A slim random model: its SavedModel (in-process) and the four CLI exports (in parallel)."""
  root = tmp_path_factory.mktemp('portable')
  keras.utils.set_random_seed(5)
  config = serving.load_experiment_config(tiny_config.BASE_CONFIG,
                                          overrides=tiny_config.SLIM_OVERRIDES)
  module = serving.build_serving_module(config, None)
  prefix = tf.train.Checkpoint(**module.model.checkpoint_items).write(str(root / 'ckpt' / 'model'))
  saved_model_dir = pathlib.Path(serving.save_module(module, root / 'saved_model'))
  processes = {}
  for export_format, quantization in VARIANTS:
    output_path = root / f'{export_format}_{quantization}'
    processes[(export_format, quantization)] = subprocess.Popen(
        _export_command(prefix, output_path, export_format, quantization),
        cwd=tiny_config.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  files, stdouts = {}, {}
  for variant, process in processes.items():
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, (variant, stderr[-3000:])
    stdouts[variant] = stdout
    files[variant] = root / f'{variant[0]}_{variant[1]}' / '1' / portable.MODEL_FILES[variant[0]]
  return PortableCase(checkpoint_prefix=prefix, saved_model_dir=saved_model_dir, files=files,
                      stdouts=stdouts)


@pytest.fixture(scope='session')
def fresh_runs(portable_case, photos, tmp_path_factory):
  """SavedModel and each export run by tests/export/run_portable.py in one new process."""
  folder = tmp_path_factory.mktemp('portable_runs')
  np.savez(folder / 'inputs.npz', **{f'image_{k}': image for k, image in enumerate(photos)})
  models = [portable_case.saved_model_dir] + [portable_case.files[v] for v in VARIANTS]
  result = conftest.run_python(['tests/export/run_portable.py', folder / 'inputs.npz',
                                folder / 'outputs.npz'] + models)
  assert result.returncode == 0, result.stderr[-3000:]
  outputs = dict(np.load(folder / 'outputs.npz'))
  runs = {}
  for index, name in enumerate(['saved_model'] + list(VARIANTS)):
    runs[name] = dict(source=str(outputs[f'{index}/source']), panoptic=[
        outputs[f'{index}/{k}/panoptic'] for k in range(len(photos))], segments=[
            json.loads(str(outputs[f'{index}/{k}/segments'])) for k in range(len(photos))])
  return runs


def _agreement(run, reference) -> float:
  same = sum(int((a == b).sum()) for a, b in zip(run['panoptic'], reference['panoptic']))
  return same / sum(a.size for a in reference['panoptic'])


def test_cli_writes_numbered_versions_with_metadata(portable_case):
  for variant, path in portable_case.files.items():
    assert path.is_file(), variant
    assert str(path) in portable_case.stdouts[variant]
    sidecar = json.loads((path.parent / serving.METADATA_ASSET).read_text())
    assert sidecar['export_format'] == variant[0] and sidecar['quantization'] == variant[1]
    assert sidecar['class_names'][1:4] == ['disc', 'box', 'triangle']
    assert sidecar['checkpoint_path'] == portable_case.checkpoint_prefix
  # Quantized weights make smaller files.
  sizes = {variant: path.stat().st_size for variant, path in portable_case.files.items()}
  assert sizes[('tflite', 'float16')] < 0.6 * sizes[('tflite', 'none')]
  assert sizes[('tflite', 'dynamic_int8')] < 0.4 * sizes[('tflite', 'none')]


def test_float32_exports_give_the_saved_model_maps_in_a_fresh_process(fresh_runs, photos):
  reference = fresh_runs['saved_model']
  assert len(np.unique(reference['panoptic'][0])) > 3  # The test means something.
  for variant in (('tflite', 'none'), ('onnx', 'none')):
    run = fresh_runs[variant]
    assert run['source'].endswith(portable.MODEL_FILES[variant[0]])
    for panoptic, image in zip(run['panoptic'], photos):
      assert panoptic.shape == image.shape[:2] and panoptic.dtype == np.int32
    agreement = _agreement(run, reference)
    print(f'{variant}: {100 * agreement:.3f}% of pixels as the SavedModel')
    assert agreement >= 0.999, variant
    for segments, expected in zip(run['segments'], reference['segments']):
      assert [s['id'] for s in segments] == [s['id'] for s in expected], variant


def test_quantized_tflite_exports_run_and_report_agreement(fresh_runs, photos):
  reference = fresh_runs['saved_model']
  for variant in (('tflite', 'float16'), ('tflite', 'dynamic_int8')):
    run = fresh_runs[variant]
    for panoptic, image in zip(run['panoptic'], photos):
      assert panoptic.shape == image.shape[:2] and panoptic.dtype == np.int32
    agreement = _agreement(run, reference)
    print(f'{variant}: {100 * agreement:.2f}% of pixels as the SavedModel (random weights)')
    # float16 weights barely move random-weight logits; int8 may move more.
    assert agreement >= (0.99 if variant[1] == 'float16' else 0.5), (variant, agreement)


def test_tflite_uses_builtin_ops_only(portable_case):
  from ai_edge_litert import schema_py_generated as schema_fb
  for variant in VARIANTS[:3]:
    model = schema_fb.Model.GetRootAs(portable_case.files[variant].read_bytes(), 0)
    opcodes = [model.OperatorCodes(i) for i in range(model.OperatorCodesLength())]
    codes = {max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) for code in opcodes}
    assert schema_fb.BuiltinOperator.CUSTOM not in codes, variant
    assert schema_fb.BuiltinOperator.CONV_2D in codes


def test_predictor_constructors_match_from_saved_model(portable_case, photos):
  expected = predictor_lib.Predictor.from_saved_model(portable_case.saved_model_dir)(photos[2])
  for constructor, variant in ((predictor_lib.Predictor.from_tflite, ('tflite', 'none')),
                               (predictor_lib.Predictor.from_onnx, ('onnx', 'none'))):
    # The base path (highest version) is accepted, like from_saved_model's.
    runner = constructor(portable_case.files[variant].parents[1])
    result = runner(photos[2])
    assert np.mean(result.panoptic == expected.panoptic) >= 0.999
    assert [s.id for s in result.segments] == [s.id for s in expected.segments]
    assert runner.class_names == predictor_lib.Predictor.from_saved_model(
        portable_case.saved_model_dir).class_names
    with pytest.raises(ValueError, match=r'one uint8 \[1, H, W, 3\] image'):
      runner._serve_fn(np.zeros((2, 8, 8, 3), np.uint8))


def test_detect_format_and_clear_errors(portable_case, tmp_path):
  assert runtimes.detect_format(portable_case.saved_model_dir.parent) == 'saved_model'
  for variant, path in portable_case.files.items():
    assert runtimes.detect_format(path) == variant[0]
    assert runtimes.detect_format(path.parents[1]) == variant[0]
  (tmp_path / 'notes.txt').write_text('hello')
  with pytest.raises(ValueError, match='neither a LiteRT'):
    runtimes.detect_format(tmp_path / 'notes.txt')
  with pytest.raises(ValueError, match='holds no export'):
    runtimes.detect_format(tmp_path)
  (tmp_path / 'bad.onnx').write_bytes(b'not a model')
  with pytest.raises(ValueError, match='not an ONNX model'):
    predictor_lib.Predictor.from_onnx(tmp_path / 'bad.onnx')


def test_export_cli_rejects_bad_combinations_before_building(portable_case, tmp_path):
  result = conftest.run_python(_export_command(portable_case.checkpoint_prefix, tmp_path / 'x',
                                               'onnx', 'float16')[1:], timeout=300)
  assert result.returncode == 2
  assert 'only for --format=tflite' in result.stderr and 'Traceback' not in result.stderr
  existing = portable_case.files[('tflite', 'none')].parent
  result = conftest.run_python(_export_command(portable_case.checkpoint_prefix, existing,
                                               'tflite', 'none')[1:], timeout=300)
  assert result.returncode == 2 and 'refusing to overwrite' in result.stderr


def test_predict_cli_picks_the_runtime_from_the_file(portable_case, photos, tmp_path):
  from PIL import Image
  Image.fromarray(photos[2]).save(tmp_path / 'cat.png')
  expected = predictor_lib.Predictor.from_saved_model(portable_case.saved_model_dir)(
      tmp_path / 'cat.png')
  result = conftest.run_python(['-m', 'kmax_tf.predict',
                                f'--model={portable_case.files[("onnx", "none")]}',
                                f'--images={tmp_path}/cat.png', f'--output_dir={tmp_path}/out'])
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((tmp_path / 'out' / 'segments' / 'cat.json').read_text())
  assert [s['panoptic_label'] for s in record['segments_info']] == [
      s.id for s in expected.segments]


def test_float32_resize_ratio_equals_float64_cast():
  """The resize-to-range ratio in float32 is bit-identical to DeepLab2's float64 one."""
  from kmax_tf.data import preprocessing
  numerators = np.arange(1, 2049, dtype=np.float64)[:, None]
  denominators = np.arange(1, 8193, dtype=np.float64)[None, :]
  np.testing.assert_array_equal((numerators / denominators).astype(np.float32),
                                numerators.astype(np.float32) / denominators.astype(np.float32))
  sizes = tf.range(1, 10001)
  for target in (129, 513, 641, 1025, 1281, 2049):
    expected = (np.float64(target) / np.arange(1, 10001, dtype=np.float64)).astype(np.float32)
    np.testing.assert_array_equal(preprocessing._ratio(target, sizes).numpy(), expected)
