"""The one error the launcher raises when a backing service cannot be had."""


class MissingService(RuntimeError):
    """A service neither answers at its URL nor could be started here.

    The message is meant for a person: it names the service, where it was
    expected, and what to install or fix.
    """
