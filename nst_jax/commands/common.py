"""What every command shares: one-line errors, the compilation cache, JSON-lines metrics, progress bars."""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Callable

from absl import app, flags, logging

from nst_jax.errors import NstJaxError


def enable_compilation_cache(enabled: bool = True) -> None:
  """Persistent XLA compilation cache under the nst-jax cache dir: a 2.5 s compile becomes ~0.05 s.

  JAX's own `JAX_COMPILATION_CACHE_DIR`, when set, names the folder instead (e.g. one cache shared by
  several homes, as the test suite does).
  """
  if not enabled:
    return
  import jax
  from nst_jax.weights import cache_dir
  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(cache_dir(), "jax_cache")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return  # A read-only home: run without the cache.
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def friendly_main(main: Callable[[list[str]], int | None]) -> Callable[[list[str]], int | None]:
  """Wraps an absl `main`: NstJaxError -> `error: ...` on stderr and exit 2; Ctrl-C -> exit 130."""

  def wrapped(argv):
    logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*random VGG19 weights.*")
    try:
      return main(argv)
    except NstJaxError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except KeyboardInterrupt:
      print("interrupted", file=sys.stderr)
      sys.exit(130)

  return wrapped


_HELP_ARGS = ("--help", "-help", "--helpshort", "-helpshort", "-?", "-h")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag is one `error: ...` line and exit 2 (absl prints two lines, FATAL)."""
  try:
    return flags.FLAGS(argv)
  except flags.UnrecognizedFlagError as e:
    from nst_jax import settings
    if e.flagname not in settings.VIDEO_ONLY:
      print(f"error: {e} (see --help)", file=sys.stderr)
    else:
      print(f"error: {settings.video_only_error(e.flagname, flag=True)}", file=sys.stderr)
    sys.exit(2)
  except flags.Error as e:
    print(f"error: {e} (see --help)", file=sys.stderr)
    sys.exit(2)


def run(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if any(arg in _HELP_ARGS for arg in argv[1:]):
    # absl's --help lists only __main__'s flags (none for `nst-jax` or `python -m ...main`) and exits 1.
    module = sys.modules[main.__module__]
    print((module.__doc__ or "").strip() + "\n\nflags:\n" + flags.FLAGS.module_help(module))
    sys.exit(0)
  app.run(friendly_main(main), argv=argv, flags_parser=_parse_flags)


class MetricsLog:
  """Appends one JSON object per line (step, losses, timing) and flushes, so a crash loses nothing."""

  def __init__(self, path: str, *, append: bool = False):
    self.path = path
    self._file = open(path, "a" if append else "w", encoding="utf-8")

  def write(self, record: dict) -> None:
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def progress_callback(total: int, initial: int = 0, *, desc: str = "stylizing", disable: bool = False):
  """A run-loop callback drawing a tqdm bar with step, losses and speed. Returns `(callback, bar)`."""
  from tqdm import tqdm
  bar = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=disable, dynamic_ncols=True)

  def callback(step, state, metrics):
    bar.update(step - bar.n)
    if metrics is not None:
      bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("total", "content", "style", "tv")}, refresh=False)

  return callback, bar
