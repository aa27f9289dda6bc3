"""User-facing errors: one line naming the file/field/line and the fix, no traceback."""


class UserError(Exception):
  """A mistake in the user's input (file, config, flag). The CLI prints it as one line, exit 2."""
