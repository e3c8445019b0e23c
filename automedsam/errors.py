"""The one exception type a user sees: a message that says what is wrong and how to fix it."""


class AutomedsamError(Exception):
    """An error caused by the user's input or environment, reported without a traceback.

    The message names the offending file, case or option and says what to do about it.
    """
