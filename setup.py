"""Installs kmax_tf: kMaX-DeepLab for TensorFlow 2 with Keras 2 semantics."""

import setuptools
from setuptools.command import build_ext as setuptools_build_ext

# The stack is pinned on purpose; see README.md ("The stack").
INSTALL_REQUIRES = [
    'tensorflow==2.20.0',
    'tf-keras==2.20.1',
    'tf-models-official==2.20.0',
    'numpy>=2.0,<3',
    'scipy>=1.11',
    # kmax_tf/protos/*_pb2.py come from protoc 5.27.2 (see protos/generate.py).
    'protobuf>=5.28,<8',
    'pycocotools>=2.0.8',
    'Pillow>=10',
]

TEST_REQUIRES = [
    'pytest>=8',
    'ruff==0.17.6',
    'hotcoco==1.3.0',
    # Compiles protos/*.proto in tests/test_protos.py.
    'grpcio-tools',
    # panopticapi-lite==0.2.0 is installed with --no-deps by .ci/run: it
    # declares numpy<2 but runs unchanged on numpy 2.
]


# LiteRT runs with ai-edge-litert (installed with tensorflow); ONNX export and
# inference need these (pip install -e '.[onnx]').
ONNX_REQUIRES = [
    'tf2onnx==1.17.0',
    'onnx>=1.17',
    'onnxruntime>=1.20',
]


class OptionalBuildExt(setuptools_build_ext.build_ext):
  """Builds the optional C speed-ups; on any failure warns and goes on.

  kmax_tf/evaluation/_pqfast.c only speeds up PQ evaluation of PNG files:
  without a compiler the pure Python/numpy path gives identical numbers.
  """

  def run(self):
    try:
      super().run()
    except Exception as error:  # noqa: BLE001  (any build failure: warn)
      self._skip('all extensions', error)

  def build_extension(self, ext):
    try:
      super().build_extension(ext)
    except Exception as error:  # noqa: BLE001  (any build failure: warn)
      self._skip(ext.name, error)

  def _skip(self, what, error):
    import warnings
    warnings.warn(f'kmax_tf: could not build {what} ({error}); using the pure Python '
                  'fallback (same results, slower PQ evaluation).', stacklevel=2)


setuptools.setup(
    name='kmax_tf',
    version='0.1.0',
    description='kMaX-DeepLab (k-means Mask Transformer) for TensorFlow 2, '
    'compatible with DeepLab2 configs and checkpoints.',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9,<3.14',
    # Only the library is installed: trainer/ and evaluation/ are entry-point
    # scripts run from the checkout, not packages.
    packages=setuptools.find_packages(include=['kmax_tf', 'kmax_tf.*']),
    package_data={'kmax_tf': ['data/descriptors/*.json', 'pretrained/registry.json']},
    ext_modules=[setuptools.Extension('kmax_tf.evaluation._pqfast',
                                      ['kmax_tf/evaluation/_pqfast.c'], optional=True)],
    cmdclass={'build_ext': OptionalBuildExt},
    install_requires=INSTALL_REQUIRES,
    extras_require={'test': TEST_REQUIRES, 'onnx': ONNX_REQUIRES},
    license='Apache-2.0',
)
