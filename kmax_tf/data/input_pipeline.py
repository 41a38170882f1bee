"""tf.data input pipeline for training and evaluation, tf.distribute-ready.

`build_dataset` reads DeepLab2-format TFRecords (several globs allowed), decodes
and checks each record, generates samples (kmax_tf.data.sample_generator) and
batches them. With an `input_context` (as passed by
`strategy.distribute_datasets_from_function`) each input pipeline reads its own
shard of the files and batches global_batch // num_replicas_in_sync.

Training: files shuffled every epoch and repeated forever, records interleaved
from up to 32 files and shuffled, random augmentation, `drop_remainder`.
Evaluation: files in sorted order, records in file order, one pass.

Reproducibility: with a seed (argument or DatasetOptions.seed) every shuffle is
seeded, ordering is deterministic and sample i of input pipeline p is augmented
with stateless ops seeded by fold_in([seed, p], i), so the same seed gives the
same batches. Without a seed a random one is drawn and tf.data may reorder
elements for speed.

Bad data stops the pipeline with an error naming the record (see
tfrecord_decoder). A corrupt TFRecord frame is reported by TensorFlow itself as
DataLossError "corrupted record at <byte offset>", without the file name, so
each file's records are byte-counted against its size and a short count fails
with the file name and offset. `validate_tfrecord_files` additionally decodes
every record eagerly and names file and record index.
"""

import os
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from kmax_tf.data import sample_generator
from kmax_tf.data import tfrecord_decoder

# Files read concurrently while training (DeepLab2 uses 32).
MAX_INTERLEAVED_FILES = 32
_DEFAULT_SHUFFLE_BUFFER = 256


def resolve_file_patterns(file_patterns: Sequence[str]) -> List[str]:
  """Expands globs into a sorted, duplicate-free file list.

  Raises:
    ValueError: no pattern given, or a pattern matching no file (named).
  """
  if isinstance(file_patterns, (str, bytes)):
    file_patterns = [file_patterns]
  file_patterns = list(file_patterns)
  if not file_patterns:
    raise ValueError('dataset_options.file_pattern is empty: give at least one TFRecord glob.')
  files = []
  for pattern in file_patterns:
    matches = tf.io.gfile.glob(pattern)
    if not matches:
      raise ValueError(f'file_pattern {pattern!r} matches no file.')
    files.extend(matches)
  return sorted(set(files))


def _derive_seed(base_seed: int, *salt: int) -> int:
  """A 31-bit seed for tf.data ops, mixed from the base seed and salts."""
  return int(np.random.SeedSequence([base_seed % 2**63, *salt]).generate_state(1)[0] >> 1)


def _options_seed(dataset_options) -> Optional[int]:
  if dataset_options.HasField('seed'):
    return int(dataset_options.seed)
  return None


# Bytes of TFRecord framing around each record (length, 2 CRCs).
_RECORD_FRAMING_BYTES = 16


def _read_checked_tfrecord(path: tf.Tensor, size: tf.Tensor) -> tf.data.Dataset:
  """(path, record) pairs of one TFRecord file; fails naming the file if corrupt.

  TFRecordDataset reports a corrupt frame without the file name. Here read
  errors end the file's stream instead, and at its end the bytes of the records
  read must add up to the file size, otherwise the pipeline fails with an error
  naming the file and the offset of the first unreadable record.
  """
  records = tf.data.TFRecordDataset(path).ignore_errors().map(lambda record: (record, False))
  records = records.concatenate(tf.data.Dataset.from_tensors((tf.constant(b''), True)))

  def count_bytes(consumed, element):
    record, is_end = element
    consumed += tf.where(
        is_end, tf.constant(0, tf.int64),
        tf.cast(tf.strings.length(record), tf.int64) + _RECORD_FRAMING_BYTES)
    check = tf.debugging.Assert(
        tf.logical_or(tf.logical_not(is_end), tf.equal(consumed, size)),
        ['TFRecord file', path, 'is corrupt or truncated: the record at byte offset', consumed,
         'cannot be read (file size', size, 'bytes)'])
    with tf.control_dependencies([check]):
      return consumed, (path, record, is_end)

  records = records.scan(tf.constant(0, tf.int64), count_bytes)
  return records.filter(lambda path, record, is_end: tf.logical_not(is_end)).map(
      lambda path, record, is_end: (path, record))


def _read_records(files: List[str], *, is_training: bool, deterministic: bool,
                  shuffle_seed: Optional[int], shard: Optional[tuple],
                  shuffle_buffer_size: int) -> tf.data.Dataset:
  """(source path, serialized record) pairs, sharded/shuffled/repeated."""
  sizes = [tf.io.gfile.stat(path).length for path in files]
  dataset = tf.data.Dataset.from_tensor_slices(
      (tf.constant(files, tf.string), tf.constant(sizes, tf.int64)))
  shard_records = False
  if shard is not None:
    num_shards, shard_index = shard
    if len(files) >= num_shards:
      dataset = dataset.shard(num_shards, shard_index)
    else:
      # Too few files to split: every pipeline reads all and keeps its share.
      shard_records = True
  if is_training:
    if not shard_records:
      dataset = dataset.shuffle(len(files), seed=shuffle_seed, reshuffle_each_iteration=True)
    # else: every pipeline must see the same record order for shard() to split it.
    dataset = dataset.repeat()

  def read_file(path, size):
    return _read_checked_tfrecord(path, size)

  if is_training:
    dataset = dataset.interleave(
        read_file, cycle_length=min(MAX_INTERLEAVED_FILES, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic or shard_records)
  else:
    # Evaluation reads files one after the other, records in file order.
    dataset = dataset.interleave(read_file, cycle_length=1)
  if shard_records:
    dataset = dataset.shard(*shard)
  if is_training:
    dataset = dataset.shuffle(
        shuffle_buffer_size,
        seed=None if shuffle_seed is None else _derive_seed(shuffle_seed, 1),
        reshuffle_each_iteration=True)
  return dataset


def build_dataset(dataset_options,
                  descriptor,
                  *,
                  is_training: bool,
                  input_context: Optional[tf.distribute.InputContext] = None,
                  seed: Optional[int] = None,
                  only_semantic_annotations: bool = False) -> tf.data.Dataset:
  """Builds the batched sample dataset.

  Args:
    dataset_options: DatasetOptions proto (file_pattern, batch_size, crop and
      resize spec, augmentations, ...). batch_size is global.
    descriptor: DatasetDescriptor of the dataset.
    is_training: training (augment, shuffle, repeat) or evaluation.
    input_context: tf.distribute.InputContext, or None for one pipeline with
      one replica.
    seed: base seed; overrides dataset_options.seed. None and no options seed:
      a random seed and non-deterministic order.
    only_semantic_annotations: produce only semantic targets.

  Returns:
    tf.data.Dataset of dicts of batched sample tensors (keys and per-sample
    shapes as in sample_generator), batch = per-replica batch size.

  Raises:
    ValueError: empty/unmatched file patterns, a batch size not divisible by the
      number of replicas, an evaluation batch other than 1 per replica, or an
      invalid crop/resize/augmentation setting.
  """
  files = resolve_file_patterns(dataset_options.file_pattern)
  global_batch = dataset_options.batch_size
  if global_batch <= 0:
    raise ValueError(f'dataset_options.batch_size must be positive, got {global_batch}.')
  shard = None
  pipeline_id = 0
  batch_size = global_batch
  if input_context is not None:
    replicas = input_context.num_replicas_in_sync
    if global_batch % replicas:
      raise ValueError(f'Global batch_size {global_batch} is not divisible by the '
                       f'{replicas} replicas in sync.')
    batch_size = input_context.get_per_replica_batch_size(global_batch)
    pipeline_id = input_context.input_pipeline_id
    if input_context.num_input_pipelines > 1:
      shard = (input_context.num_input_pipelines, pipeline_id)
  if not is_training and batch_size != 1:
    raise ValueError(f'Evaluation needs 1 sample per replica (raw labels keep each image\'s '
                     f'size), got a per-replica batch of {batch_size}.')
  if len(dataset_options.crop_size) != 2:
    raise ValueError(f'dataset_options.crop_size must be [height, width], got '
                     f'{list(dataset_options.crop_size)}.')

  if seed is None:
    seed = _options_seed(dataset_options)
  deterministic = seed is not None or not is_training
  if seed is None:
    seed = int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 1)
  pipeline_seed = _derive_seed(seed, pipeline_id)
  shuffle_buffer = dataset_options.shuffle_buffer_size or _DEFAULT_SHUFFLE_BUFFER

  generator = sample_generator.PanopticSampleGenerator.from_options(
      dataset_options, descriptor, is_training=is_training,
      only_semantic_annotations=only_semantic_annotations)
  decoder = tfrecord_decoder.TFRecordDecoder(
      descriptor, decode_groundtruth_label=dataset_options.decode_groundtruth_label)

  def decoded_stream(stream_salt: int) -> tf.data.Dataset:
    records = _read_records(
        files, is_training=is_training, deterministic=deterministic,
        shuffle_seed=_derive_seed(pipeline_seed, stream_salt) if is_training else None,
        shard=shard, shuffle_buffer_size=shuffle_buffer)
    return records.map(lambda source, record: decoder(record, source),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)

  dataset = decoded_stream(0)
  use_copy_paste = is_training and generator.uses_copy_paste
  if use_copy_paste:
    # A second, differently shuffled stream supplies the pasted samples.
    dataset = tf.data.Dataset.zip((dataset, decoded_stream(1)))
  base_seed = tf.constant([seed % 2**63, pipeline_id], tf.int64)

  def generate(index, element):
    sample_seed = tf.random.experimental.stateless_fold_in(base_seed, index)
    if use_copy_paste:
      return generator(element[0], element[1], seed=sample_seed)
    return generator(element, seed=sample_seed)

  dataset = dataset.enumerate().map(generate, num_parallel_calls=tf.data.AUTOTUNE,
                                    deterministic=deterministic)
  dataset = dataset.batch(batch_size, drop_remainder=is_training)
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = deterministic
  options.autotune.enabled = True
  if input_context is not None:
    # Sharded explicitly above; tf.distribute must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
  return dataset.with_options(options)


def validate_tfrecord_files(file_patterns: Sequence[str], descriptor=None,
                            decode_groundtruth_label: bool = True) -> int:
  """Reads and decodes every record eagerly; stops at the first bad one.

  Catches what the streaming pipeline can only report without a file name
  (a corrupt TFRecord frame or checksum) as well as the decoder's checks.

  Args:
    file_patterns: TFRecord globs.
    descriptor: optional DatasetDescriptor for the label class check.
    decode_groundtruth_label: whether labels must be present.

  Returns:
    The number of records checked.

  Raises:
    ValueError: naming the file and the record index of the first bad record.
  """
  decoder = tfrecord_decoder.TFRecordDecoder(descriptor, decode_groundtruth_label)
  total = 0
  for path in resolve_file_patterns(file_patterns):
    records = tf.data.TFRecordDataset(path).map(lambda record, p=path: decoder(record, p))
    index = 0
    iterator = iter(records)
    while True:
      try:
        next(iterator)
      except StopIteration:
        break
      except tf.errors.OpError as error:
        message = error.message.split('\n')[0]
        raise ValueError(f'{os.fspath(path)}: record #{index} is bad: {message}') from None
      index += 1
    total += index
  return total
