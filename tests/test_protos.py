"""The checked-in kmax_tf/protos/*_pb2.py are what protos/*.proto compile to."""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_generated_code_is_current(tmp_path):
  pytest.importorskip('grpc_tools')
  command = [sys.executable, '-m', 'grpc_tools.protoc', f'-Ikmax_tf/protos={REPO / "protos"}',
             f'--python_out={tmp_path}'] + sorted(str(p) for p in (REPO / 'protos').glob('*.proto'))
  subprocess.run(command, check=True, cwd=REPO)
  for proto in (REPO / 'protos').glob('*.proto'):
    name = proto.stem + '_pb2.py'
    generated = (tmp_path / 'kmax_tf' / 'protos' / name).read_text()
    shipped = (REPO / 'kmax_tf' / 'protos' / name).read_text()
    assert generated == shipped, (
        f'kmax_tf/protos/{name} is stale: run `python protos/generate.py`')


def test_extension_fields_cannot_collide_with_deeplab2():
  from kmax_tf.protos import config_pb2
  ours = {
      'DatasetOptions': {'dataset_descriptor_file', 'shuffle_buffer_size', 'seed'},
      'MaXDeepLabOptions': {'transformer_decoder_drop_path_keep_prob', 'num_mask_slots',
                            'high_resolution_output_stride', 'use_auxiliary_semantic_decoder',
                            'transformer_decoder_num_layers', 'pixel_decoder_channels',
                            'pixel_decoder_num_blocks'},
      'SolverOptions': {'mixed_precision_policy', 'non_finite_loss_action'},
      'EvaluatorOptions': {'panoptic_quality_variant', 'compute_miou', 'compute_mask_ap'},
  }
  seen = set()

  def walk(descriptor):
    if descriptor.full_name in seen:
      return
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
      if field.name in ours.get(descriptor.name, ()):
        assert field.number >= 1000, field.full_name
      else:
        assert field.number < 1000, field.full_name
      if field.message_type is not None:
        walk(field.message_type)

  walk(config_pb2.ExperimentOptions.DESCRIPTOR)
