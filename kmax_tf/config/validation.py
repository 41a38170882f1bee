"""Checks an `ExperimentOptions` before anything expensive is built.

Errors name the config file and the field (e.g.
`model_options.backbone.name`), show the received value and list the valid
choices, so users can fix a config without reading a TensorFlow traceback.

The choices of the built parts are read from their builders (one list each):
backbones `model.builder.PIXEL_ENCODER_BUILDERS`, optimizers
`training.optimizer.OPTIMIZER_BUILDERS`, learning-rate policies
`training.learning_rate.DECAY_SCHEDULE_BUILDERS`, precision policies
`training.optimizer.SUPPORTED_PRECISION_POLICIES`, post-processing
`model.post_processor.POST_PROCESSING_MODES`. Those modules load TensorFlow, so
`check_choices` imports them when it runs; importing this module and the other
checks (modes, placeholders, datasets) stay TensorFlow-free, which lets the
trainer report those errors in a second.
"""

from typing import Iterable

from kmax_tf.config.loader import ConfigError
from kmax_tf.config.loader import unresolved_placeholders
from kmax_tf.data import dataset_descriptors

AUTOAUGMENT_POLICIES = ('', 'simple_classification_policy',
                        'simple_classification_policy_magnitude_scale_0.2')
COPY_PASTE_OPTIONS = ('none', 'random', 'all')
NON_FINITE_LOSS_ACTIONS = ('stop', 'restore')
PQ_VARIANTS = ('official', 'deeplab2')

# The trainer's --mode values (run by training.train_lib) and what each reads.
MODES = ('train', 'eval', 'train_and_eval', 'continuous_eval')
TRAIN_MODES = ('train', 'train_and_eval')
EVAL_MODES = ('eval', 'train_and_eval', 'continuous_eval')


def _choice(value: str, choices: Iterable[str], field: str, source: str) -> None:
  choices = tuple(choices)
  if value not in choices:
    shown = ', '.join(repr(c) for c in choices)
    raise ConfigError(f'{source}: {field} is {value!r}; valid values: {shown}')


def check_resolved(value: str, field: str, source: str = 'config') -> str:
  """Returns `value`, or raises if it still holds a `${NAME}` placeholder."""
  names = unresolved_placeholders(value)
  if names:
    name = names[0]
    raise ConfigError(
        f'{source}: {field} is {value!r}, whose placeholder ${{{name}}} is not resolved. '
        f'Set it with --substitution {name}=..., the environment variable {name}, '
        f'load_config(..., substitutions={{"{name}": ...}}), or override the field.')
  return value


def _check_crop(options, field: str, source: str) -> None:
  crop = list(options.crop_size)
  if not crop:
    return
  if len(crop) != 2:
    raise ConfigError(f'{source}: {field}.crop_size must have 2 values [height, width], '
                      f'got {crop}')
  for size in crop:
    if size < 33 or (size - 1) % 32:
      raise ConfigError(
          f'{source}: {field}.crop_size is {crop}; kMaX-DeepLab needs sizes of the form '
          f'32k+1 (e.g. 641, 1281, 1025x2049), and {size} is not (nearest: '
          f'{max(33, round((size - 1) / 32) * 32 + 1)})')
  for name in ('min_resize_value', 'max_resize_value'):
    values = list(getattr(options, name))
    if len(values) > 2:
      raise ConfigError(f'{source}: {field}.{name} takes 1 or 2 values, got {values}')


def _check_dataset(options, field: str, source: str) -> None:
  if not options.dataset and not options.HasField('dataset_descriptor_file'):
    return
  try:
    dataset_descriptors.descriptor_from_options(options)
  except ValueError as error:
    raise ConfigError(f'{source}: {field}.dataset: {error}') from None
  _check_crop(options, field, source)
  if options.batch_size <= 0:
    raise ConfigError(f'{source}: {field}.batch_size must be positive, got {options.batch_size}')
  augment = options.augmentations
  _choice(augment.autoaugment_policy_name, AUTOAUGMENT_POLICIES,
          f'{field}.augmentations.autoaugment_policy_name', source)
  if augment.min_scale_factor > augment.max_scale_factor:
    raise ConfigError(f'{source}: {field}.augmentations.min_scale_factor '
                      f'({augment.min_scale_factor}) exceeds max_scale_factor '
                      f'({augment.max_scale_factor})')
  copy_paste = augment.panoptic_copy_paste
  for name in ('panoptic_copy_paste_thing_option', 'panoptic_copy_paste_stuff_option',
               'panoptic_copy_paste_void_option'):
    _choice(getattr(copy_paste, name), COPY_PASTE_OPTIONS,
            f'{field}.augmentations.panoptic_copy_paste.{name}', source)


def check_choices(config, source: str = 'config') -> None:
  """Checks the names of the built parts against their builders' lists (loads TensorFlow)."""
  from kmax_tf.layers import recompute  # (TensorFlow)
  from kmax_tf.model import builder as model_builder
  from kmax_tf.model import post_processor
  from kmax_tf.training import learning_rate
  from kmax_tf.training import optimizer

  model = config.model_options
  if model.HasField('backbone') or model.HasField('max_deeplab'):
    _choice(model.backbone.name, model_builder.PIXEL_ENCODER_BUILDERS,
            'model_options.backbone.name', source)
  solver = config.trainer_options.solver_options
  _choice(solver.optimizer, optimizer.OPTIMIZER_BUILDERS,
          'trainer_options.solver_options.optimizer', source)
  _choice(solver.learning_policy, learning_rate.DECAY_SCHEDULE_BUILDERS,
          'trainer_options.solver_options.learning_policy', source)
  _choice(solver.mixed_precision_policy, optimizer.SUPPORTED_PRECISION_POLICIES,
          'trainer_options.solver_options.mixed_precision_policy', source)
  for part in solver.recompute_activations:
    _choice(part, recompute.PARTS, 'trainer_options.solver_options.recompute_activations', source)
  _choice(config.evaluator_options.transformer_post_processing,
          post_processor.POST_PROCESSING_MODES, 'evaluator_options.transformer_post_processing',
          source)


def validate_config(config, source: str = 'config', with_choices: bool = True) -> None:
  """Mode-independent checks; raises ConfigError naming file and field.

  `with_choices=False` leaves out `check_choices` (the one check that loads
  TensorFlow), for callers that report other config errors first.
  """
  if with_choices:
    check_choices(config, source)
  model = config.model_options
  if model.WhichOneof('meta_architecture') not in (None, 'max_deeplab'):
    raise ConfigError(f'{source}: model_options sets '
                      f'{model.WhichOneof("meta_architecture")}; kmax_tf builds kMaX-DeepLab, '
                      'which is configured by model_options.max_deeplab')
  for name in ('backbone_width_multiplier', 'backbone_layer_multiplier', 'stem_width_multiplier'):
    if getattr(model.backbone, name) <= 0:
      raise ConfigError(f'{source}: model_options.backbone.{name} must be positive')
  if not 0.0 < model.backbone.drop_path_keep_prob <= 1.0:
    raise ConfigError(f'{source}: model_options.backbone.drop_path_keep_prob must be in (0, 1], '
                      f'got {model.backbone.drop_path_keep_prob}')
  max_deeplab = model.max_deeplab
  if max_deeplab.HasField('high_resolution_output_stride'):
    _choice(str(max_deeplab.high_resolution_output_stride), ('4', '2'),
            'model_options.max_deeplab.high_resolution_output_stride', source)
  if max_deeplab.HasField('transformer_decoder_drop_path_keep_prob') and not (
      0.0 < max_deeplab.transformer_decoder_drop_path_keep_prob <= 1.0):
    raise ConfigError(f'{source}: model_options.max_deeplab.'
                      'transformer_decoder_drop_path_keep_prob must be in (0, 1]')
  if len(max_deeplab.pixel_decoder_channels) != len(max_deeplab.pixel_decoder_num_blocks):
    raise ConfigError(f'{source}: model_options.max_deeplab.pixel_decoder_channels and '
                      'pixel_decoder_num_blocks must have the same length')
  if max_deeplab.transformer_decoder_num_layers and len(
      max_deeplab.transformer_decoder_num_layers) != 3:
    raise ConfigError(f'{source}: model_options.max_deeplab.transformer_decoder_num_layers '
                      'takes 3 values (layers at stride 32, 16 and 8)')

  _check_dataset(config.train_dataset_options, 'train_dataset_options', source)
  _check_dataset(config.eval_dataset_options, 'eval_dataset_options', source)

  solver = config.trainer_options.solver_options
  _choice(solver.non_finite_loss_action, NON_FINITE_LOSS_ACTIONS,
          'trainer_options.solver_options.non_finite_loss_action', source)
  evaluator = config.evaluator_options
  _choice(evaluator.panoptic_quality_variant, PQ_VARIANTS,
          'evaluator_options.panoptic_quality_variant', source)


def datasets_read_by(config, mode: str):
  """[(field name, DatasetOptions)] of the datasets `mode` reads, train first."""
  needs = []
  if mode in TRAIN_MODES:
    needs.append(('train_dataset_options', config.train_dataset_options))
  if mode in EVAL_MODES:
    needs.append(('eval_dataset_options', config.eval_dataset_options))
  return needs


def validate_for_mode(config, mode: str, source: str = 'config') -> None:
  """Checks what `mode` needs: datasets, file patterns, resolved placeholders."""
  _choice(mode, MODES, '--mode', source)
  for field, options in datasets_read_by(config, mode):
    if not options.dataset and not options.HasField('dataset_descriptor_file'):
      raise ConfigError(f'{source}: --mode={mode} needs {field}.dataset (one of '
                        f'{", ".join(dataset_descriptors.registered_dataset_names())})')
    if not options.file_pattern:
      raise ConfigError(f'{source}: --mode={mode} needs {field}.file_pattern '
                        '(TFRecord glob(s))')
    for pattern in options.file_pattern:
      check_resolved(pattern, f'{field}.file_pattern', source)
    if len(options.crop_size) != 2:
      raise ConfigError(f'{source}: --mode={mode} needs {field}.crop_size [height, width]')
  if config.model_options.initial_checkpoint:
    check_resolved(config.model_options.initial_checkpoint, 'model_options.initial_checkpoint',
                   source)
