"""The error every user-facing failure raises: its message is one line saying what, where, and
what to do. The CLI prints it without a traceback and exits non-zero."""


class ModelworksError(Exception):
    pass
