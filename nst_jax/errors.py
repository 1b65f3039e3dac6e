"""The one exception type the command-line tools turn into a one-line message and a non-zero exit."""


class NstJaxError(Exception):
  """A problem with the user's input or environment (bad file, bad setting, no weights...).

  Its message is complete on its own: commands print it as `error: <message>` with no traceback.
  """
