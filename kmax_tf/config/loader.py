"""Loads DeepLab2-schema textproto configs into `ExperimentOptions`.

DeepLab2's released configs carry `${NAME}` placeholders (`${TRAIN_SET}`,
`${INIT_CHECKPOINT}`, ...) that its users edit by hand. Here they are resolved
from, in order: the `substitutions` argument, then environment variables. A
placeholder left unresolved is kept verbatim in the config; it is an error only
where the value is actually needed (see `kmax_tf.config.validation`).
"""

import os
import pathlib
import re
from typing import Iterable, Mapping, Optional, Sequence

from google.protobuf import descriptor as descriptor_lib
from google.protobuf import text_format

from kmax_tf.protos import config_pb2

ExperimentOptions = config_pb2.ExperimentOptions

PLACEHOLDER = re.compile(r'\$\{([A-Za-z_][A-Za-z0-9_]*)\}')


class ConfigError(ValueError):
  """A config file, override or value that kmax_tf cannot use."""


def unresolved_placeholders(value: str) -> list:
  """Names of the `${NAME}` placeholders left in `value`."""
  return PLACEHOLDER.findall(value)


def substitute(text: str, substitutions: Optional[Mapping[str, str]] = None,
               environ: Optional[Mapping[str, str]] = None) -> str:
  """Replaces `${NAME}` from `substitutions`, then from the environment."""
  substitutions = dict(substitutions or {})
  environ = os.environ if environ is None else environ

  def replace(match):
    name = match.group(1)
    if name in substitutions:
      return str(substitutions[name])
    if name in environ:
      return environ[name]
    return match.group(0)

  return PLACEHOLDER.sub(replace, text)


def _parse_error_message(source: str, error: text_format.ParseError) -> str:
  line = getattr(error, 'GetLine', lambda: None)()
  column = getattr(error, 'GetColumn', lambda: None)()
  message = str(error)
  # The parser prefixes "line:column : "; keep only the explanation.
  message = re.sub(r'^\d+:\d+ : ', '', message)
  where = f'{source}:{line}:{column}' if line else source
  return f'{where}: {message}'


def parse_config_text(text: str, source: str = '<string>',
                      substitutions: Optional[Mapping[str, str]] = None,
                      overrides: Sequence[str] = ()) -> ExperimentOptions:
  """Parses textproto `text` (with substitutions and overrides applied)."""
  config = ExperimentOptions()
  try:
    text_format.Parse(substitute(text, substitutions), config)
  except text_format.ParseError as error:
    raise ConfigError(_parse_error_message(source, error)) from None
  for override in overrides:
    apply_override(config, override, substitutions)
  return config


def _read_remote(path: str) -> str:
  """A config on gs://, ram://, ... (TensorFlow is imported only for such paths)."""
  import tensorflow as tf
  try:
    with tf.io.gfile.GFile(path) as f:
      return f.read()
  except tf.errors.OpError as error:
    raise ConfigError(f'Cannot read config file {path}: {error.message}') from None


def load_config(path, substitutions: Optional[Mapping[str, str]] = None,
                overrides: Sequence[str] = (), check_choices: bool = True) -> ExperimentOptions:
  """Reads a DeepLab2-schema textproto config.

  Args:
    path: the `.textproto` file.
    substitutions: values for `${NAME}` placeholders; the environment is used
      for names not given here.
    overrides: strings applied after parsing, in order. Either
      `dotted.field.path=value` (for a repeated field, comma-separated values
      replace the list) or a textproto fragment merged into the config, e.g.
      `trainer_options { solver_options { base_learning_rate: 0.001 } }`.
    check_choices: also check backbone, optimizer, ... names against their
      builders (loads TensorFlow; `validation.check_choices` does it later).

  Returns:
    The parsed `ExperimentOptions`. Basic checks that need no mode are done
    here (see `kmax_tf.config.validation.validate_config`).

  Raises:
    ConfigError: unreadable file, a parse error (with file, line and column),
      a bad override or an invalid value.
  """
  path = os.fspath(path)
  if '://' in path and not path.startswith('file://'):
    text = _read_remote(path)
  else:
    try:
      text = pathlib.Path(path).read_text(encoding='utf-8')
    except OSError as error:
      raise ConfigError(f'Cannot read config file {path}: {error.strerror or error}') from None
  config = parse_config_text(text, source=str(path), substitutions=substitutions,
                             overrides=overrides)
  from kmax_tf.config import validation  # (validation imports this module)
  validation.validate_config(config, source=str(path), with_choices=check_choices)
  return config


def _convert_scalar(field: descriptor_lib.FieldDescriptor, text: str, where: str):
  fd = descriptor_lib.FieldDescriptor
  try:
    if field.type in (fd.TYPE_INT32, fd.TYPE_INT64, fd.TYPE_UINT32, fd.TYPE_UINT64,
                      fd.TYPE_SINT32, fd.TYPE_SINT64):
      return int(text)
    if field.type in (fd.TYPE_FLOAT, fd.TYPE_DOUBLE):
      return float(text)
    if field.type == fd.TYPE_BOOL:
      lowered = text.strip().lower()
      if lowered in ('true', '1'):
        return True
      if lowered in ('false', '0'):
        return False
      raise ValueError(text)
    if field.type == fd.TYPE_STRING:
      text = text.strip()
      if len(text) >= 2 and text[0] == text[-1] and text[0] in '"\'':
        text = text[1:-1]
      return text
  except ValueError:
    pass
  raise ConfigError(f'{where}: cannot convert {text!r} to the type of field '
                    f'{field.full_name}')


def apply_override(config: ExperimentOptions, override: str,
                   substitutions: Optional[Mapping[str, str]] = None) -> None:
  """Applies one override string (see `load_config`) to `config` in place."""
  where = f'config override {override!r}'
  override = substitute(override, substitutions)
  dotted = re.match(r'^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=(.*)$', override, re.S)
  if not dotted:
    try:
      text_format.Merge(override, config)
    except text_format.ParseError as error:
      raise ConfigError(_parse_error_message(where, error)) from None
    return
  path, value = dotted.group(1).split('.'), dotted.group(2)
  message = config
  for depth, name in enumerate(path):
    field = message.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
      valid = ', '.join(sorted(message.DESCRIPTOR.fields_by_name))
      raise ConfigError(f'{where}: {message.DESCRIPTOR.name} has no field '
                        f'{name!r}; valid fields: {valid}')
    last = depth == len(path) - 1
    if field.message_type is not None:
      if last or field.is_repeated:
        raise ConfigError(f'{where}: {".".join(path[:depth + 1])} is a message; '
                          'use a textproto fragment to set it')
      message = getattr(message, name)
      continue
    if not last:
      raise ConfigError(f'{where}: {".".join(path[:depth + 1])} is not a message')
    if field.is_repeated:
      items = [item for item in value.split(',') if item.strip()]
      container = getattr(message, name)
      del container[:]
      container.extend(_convert_scalar(field, item, where) for item in items)
    else:
      setattr(message, name, _convert_scalar(field, value, where))


def parse_key_value_pairs(pairs: Iterable[str], flag: str = '--substitution') -> dict:
  """Parses `KEY=VALUE` strings (command-line substitutions) into a dict."""
  result = {}
  for pair in pairs:
    key, sep, value = pair.partition('=')
    if not sep or not key.strip():
      raise ConfigError(f'{flag} expects KEY=VALUE, got {pair!r}')
    result[key.strip()] = value
  return result


def to_text(config: ExperimentOptions) -> str:
  """The canonical textproto of `config` (what `configs/` files hold)."""
  return text_format.MessageToString(config)
