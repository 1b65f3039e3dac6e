"""What every command shares: one-line errors, stops, the compilation cache, --help.

Metrics logs and progress bars are engine hooks (`nst_jax.hooks.MetricsLog`, `hooks.ProgressBar`)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import warnings
from typing import Callable

from absl import app, flags, logging

from nst_jax import hooks
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


class Interrupted(KeyboardInterrupt):
  """A stop signal outside a run loop (start-up, writing the result): the command exits 128 + `signum`.

  Inside a run loop `hooks.StopOnSignals` takes the signals over, so the run stops after its step with its
  checkpoint saved instead."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum


def _interrupt(signum, frame):
  raise Interrupted(signum)


@contextlib.contextmanager
def _signals_interrupt():
  """SIGINT, SIGTERM and SIGHUP raise `Interrupted` within the block (main thread only), so that every one of
  them ends a command with a message and 128 + its number, never a silent kill."""
  previous = {}
  if threading.current_thread() is threading.main_thread():
    previous = {s: signal.signal(s, _interrupt) for s in hooks.STOP_SIGNALS}
  try:
    yield
  finally:
    for s, old in previous.items():
      signal.signal(s, old)


def stop_exit(message: str, code: int):
  """Says why the command stopped on stderr (dropped when stderr is gone) and exits with `code`."""
  hooks.mark_stopping()
  with contextlib.suppress(BrokenPipeError):
    print(message, file=sys.stderr)
  sys.exit(code)


def friendly_main(main: Callable[[list[str]], int | None]) -> Callable[[list[str]], int | None]:
  """Wraps an absl `main`: NstJaxError -> `error: ...` on stderr and exit 2; a stop signal outside a run loop
  -> `interrupted by SIGINT` and exit 128 + its number (130, 143, 129); stdout or stderr closed under the command
  -> exit 141 (128 + SIGPIPE)."""

  def wrapped(argv):
    logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*random VGG19 weights.*")
    try:
      return main(argv)
    except NstJaxError as e:
      with contextlib.suppress(BrokenPipeError):  # stderr gone: the exit code alone says it.
        print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    except BrokenPipeError:
      if not hooks.broken_pipes():
        raise  # Another pipe (e.g. to ffmpeg): not a stop.
      stop_exit("stopped: stdout or stderr was closed (a broken pipe)", 128 + hooks.SIGPIPE)
    except KeyboardInterrupt as e:
      signum = getattr(e, "signum", signal.SIGINT)
      stop_exit(f"interrupted by {hooks.stop_cause(signum)}", 128 + signum)

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
  with hooks.guarded_std_streams(), _signals_interrupt():
    app.run(friendly_main(main), argv=argv, flags_parser=_parse_flags)
