"""Errors every service shares the meaning of."""


class PermanentError(Exception):
    """Processing this input can never succeed as it stands (retrying will not help).

    The message goes to the dead-letter queue with this error's text as the reason, so the text
    must tell an operator what to fix — and must not contain personal data.
    """
