"""Errors a user can meet: one line, naming the file and the problem."""


class NucleisegError(Exception):
    """Base class: the CLI prints the message (no traceback) and exits with `exit_code`."""

    exit_code = 1


class UsageError(NucleisegError):
    """A wrong option or combination of options."""

    exit_code = 2


class DataError(NucleisegError):
    """An input file or folder that cannot be used."""

    exit_code = 3


def file_error(path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}")
