"""The checked-in kmax_tf/protos/*_pb2.py match protos/*.proto."""

import importlib
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

REPO = pathlib.Path(__file__).resolve().parents[1]
PROTOS = sorted((REPO / 'protos').glob('*.proto'))


def _normalized(file_proto):
  """Drops what differs between protoc versions but not in meaning.

  protoc adds json_name to descriptor sets but not to generated code, and
  protoc versions print float defaults differently ("0.7" vs "0.699999988").
  """
  def clear(message_type):
    for field in message_type.field:
      field.ClearField('json_name')
      if field.type == field.TYPE_FLOAT and field.HasField('default_value'):
        field.default_value = repr(float(np.float32(field.default_value)))
    for nested in message_type.nested_type:
      clear(nested)
  for message_type in file_proto.message_type:
    clear(message_type)
  return file_proto


def test_generated_code_is_current(tmp_path):
  """Compiles the .proto files and compares descriptors with the shipped code."""
  pytest.importorskip('grpc_tools')
  descriptor_set = tmp_path / 'protos.pb'
  subprocess.run([sys.executable, '-m', 'grpc_tools.protoc', f'-Ikmax_tf/protos={REPO / "protos"}',
                  f'--descriptor_set_out={descriptor_set}'] + [str(p) for p in PROTOS],
                 check=True, cwd=REPO)
  compiled = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
  assert len(compiled.file) == len(PROTOS) == 5
  for file_proto in compiled.file:
    module = importlib.import_module(file_proto.name.replace('/', '.')[:-len('.proto')] + '_pb2')
    shipped = _normalized(
        descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb))
    assert shipped == _normalized(file_proto), (
        f'{module.__name__} is stale: regenerate it (see protos/generate.py)')


def test_extension_fields_cannot_collide_with_deeplab2():
  from kmax_tf.protos import config_pb2
  ours = {
      'DatasetOptions': {'dataset_descriptor_file', 'shuffle_buffer_size', 'seed'},
      'MaXDeepLabOptions': {'transformer_decoder_drop_path_keep_prob', 'num_mask_slots',
                            'high_resolution_output_stride', 'use_auxiliary_semantic_decoder',
                            'transformer_decoder_num_layers', 'pixel_decoder_channels',
                            'pixel_decoder_num_blocks'},
      'SolverOptions': {'mixed_precision_policy', 'non_finite_loss_action',
                        'recompute_activations'},
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
  assert {'ExperimentOptions', 'MaXDeepLabOptions', 'SolverOptions'} <= {
      name.rsplit('.', 1)[-1] for name in seen}
