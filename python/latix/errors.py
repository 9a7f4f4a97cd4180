"""The exceptions (and the one warning) latix raises.

Every error is a :class:`LatixError`; each subclass also derives from the built-in exception a
Python programmer would catch for that kind of failure (``ValueError`` for bad arguments,
``KeyError`` for unknown ids, ``OSError`` for file problems).
"""

from __future__ import annotations

__all__ = [
    "LatixError",
    "InvalidArgumentError",
    "NotFoundError",
    "AlreadyExistsError",
    "CorruptedIndexError",
    "IndexLockedError",
    "IndexClosedError",
    "UnsupportedVersionError",
    "LatixIOError",
    "LatixMemoryError",
    "MergeWarning",
]


class LatixError(Exception):
    """Base class of every exception raised by latix."""


class InvalidArgumentError(LatixError, ValueError):
    """An argument can never work: wrong shape, dtype or rank, NaN/Inf, bad parameter."""


class NotFoundError(LatixError, KeyError):
    """An id that the operation needs is not in the index."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AlreadyExistsError(LatixError, ValueError):
    """An id (or an index directory) that the operation would create already exists."""


class CorruptedIndexError(LatixError, OSError):
    """A file of the index is damaged: truncated, bad checksum, inconsistent header.

    The message names the damaged file.
    """


class IndexLockedError(LatixError, OSError):
    """Another writer (another handle, or another process) holds the index's write lock.

    Also raised by every mutating call on a handle inherited through ``fork()`` whose writer is
    the parent process: the child may search with it, not write (close it and open the index
    again in the child, once the parent's writer is closed).
    """


class IndexClosedError(LatixError, ValueError):
    """The index handle was closed; open the index again to use it."""


class UnsupportedVersionError(LatixError, OSError):
    """A file was written by an unknown or newer version of the latix format."""


class LatixIOError(LatixError, OSError):
    """An operating-system I/O failure (disk full, permission denied, ...) on an index file."""


class LatixMemoryError(LatixError, MemoryError):
    """Memory for an operation could not be allocated (the message says what and how much).

    Raised instead of aborting the process, e.g. for a huge non-contiguous (broadcast) array that
    would have to be copied; nothing was changed.
    """


class MergeWarning(UserWarning):
    """A merge of the merge policy failed after a commit that was published (a full disk, a
    damaged older segment, memory): the commit happened and must not be retried. The index keeps
    the state the commit published, ``Index.stats()`` reports the failure (``merge_failures``,
    ``merge_error``), and the next commit or ``compact()`` tries the merge again.
    """
