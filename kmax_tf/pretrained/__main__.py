r"""Lists, downloads and locates released checkpoints.

  python -m kmax_tf.pretrained list [--json]
  python -m kmax_tf.pretrained download NAME [NAME ...]
  python -m kmax_tf.pretrained path NAME

`list --json` prints a JSON list of the registry entries (name, url, config,
checkpoint, ...). `download` prints each model's checkpoint prefix, archive
size and sha256. `path` prints the cached checkpoint prefix, or exits with 1
if the model is not downloaded. Errors exit with 2.
"""

import argparse
import json
import sys

from kmax_tf import pretrained


def _table(entries) -> str:
  rows = [('name', 'dataset', 'backbone', 'PQ', 'config', 'cached')]
  for entry in entries:
    pq = entry.published_pq
    rows.append((entry.name, entry.dataset, entry.backbone, '-' if pq is None else f'{pq:.1f}',
                 entry.config, 'yes' if pretrained.cached_model(entry) else 'no'))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  return '\n'.join('  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                   for row in rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m kmax_tf.pretrained',
                                   description="DeepLab2's released kMaX-DeepLab checkpoints.")
  commands = parser.add_subparsers(dest='command', required=True)
  listing = commands.add_parser('list', help='list the registered models')
  listing.add_argument('--json', action='store_true', help='print a JSON list')
  fetch = commands.add_parser('download', help='download, verify and cache models')
  fetch.add_argument('names', nargs='+', metavar='NAME')
  fetch.add_argument('--quiet', action='store_true', help='no progress bar')
  locate = commands.add_parser('path', help='print the cached checkpoint prefix')
  locate.add_argument('name', metavar='NAME')
  args = parser.parse_args(argv)
  try:
    if args.command == 'list':
      entries = pretrained.list_models()
      if args.json:
        print(json.dumps([entry.to_json() for entry in entries], indent=1))
      else:
        print(_table(entries))
        print(f'\nCache: {pretrained.cache_root()}')
      return 0
    if args.command == 'download':
      for name in args.names:
        cached = pretrained.download(name, progress=not args.quiet)
        print(f'{cached.name}: {cached.checkpoint_path}\n  archive {cached.size} bytes, '
              f'sha256 {cached.sha256}')
      return 0
    path = pretrained.cached_checkpoint_path(args.name)
    if path is None:
      print(f'{args.name} is not downloaded (cache: {pretrained.cache_root()}); run '
            f'python -m kmax_tf.pretrained download {args.name}', file=sys.stderr)
      return 1
    print(path)
    return 0
  except (ValueError, OSError) as error:
    print(f'Error: {error}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
