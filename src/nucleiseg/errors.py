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


class TrainingError(NucleisegError):
    """Training could not go on (for example, the loss became NaN)."""

    exit_code = 4


class OutputBusy(NucleisegError):
    """Another run is writing into the same output folder."""

    exit_code = 1


class Interrupted(NucleisegError):
    """Ctrl-C or SIGTERM; the message says what was kept and how to go on."""

    exit_code = 130


class Cancelled(Exception):
    """Work abandoned before it finished, by the user (napari's Cancel) or because the run it
    belonged to stopped (an overlapped image, before any of its files is written)."""


def file_error(path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}")
