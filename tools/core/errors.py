"""Exceptions raised by core code; the CLI layer turns them into one-line messages."""


class StudyError(Exception):
    """Base class: a problem the user can fix (bad input file, bad design, bad manifest).

    Tools print ``str(error)`` as a single line and exit with status 1.
    """


class DesignError(StudyError):
    """The study design file is missing, malformed or violates its schema or rules."""


class ManifestError(StudyError):
    """A JSON manifest is missing, malformed or violates its schema."""


class ContractError(StudyError):
    """An NPZ file violates the data contract."""


class EngineError(StudyError):
    """A reconstruction could not be set up or run."""
