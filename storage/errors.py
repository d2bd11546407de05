"""What can go wrong with storage, in the words of the callers.

Nothing outside :mod:`storage` sees a database driver's exceptions. Every operation of
:class:`storage.Database` raises one of these instead (the driver's exception is the
``__cause__``):

* :exc:`StorageUnavailable` — the database cannot be reached or did not answer in
  time. Nothing was written; the same call may succeed later.
* :exc:`WriteRejected` — the database refused the operation as invalid (a constraint,
  a value out of range, a field that cannot be written). Trying again will not help.
* :exc:`LeaseLost` — a write of an account-scoped, fenced view was refused because its
  instance no longer holds the account's lease (the fencing token is stale or the lease
  has expired). Nothing of it was written; it must not be tried again by this holder.
* :exc:`StorageError` — anything else the database reported.
"""

from __future__ import annotations


class StorageError(Exception):
    """The database reported an error."""


class StorageUnavailable(StorageError):
    """The database cannot be reached or did not answer in time; try again later."""


class WriteRejected(StorageError):
    """The database refused this operation as invalid; trying again will not help."""


class LeaseLost(StorageError):
    """The account's lease is no longer ours: the write was refused and nothing of it written.

    ``account`` names the account when known. The next holder of the lease reloads
    from the database and reconciles with the exchange; this holder must stop writing.
    """

    def __init__(self, message: str, account: str | None = None):
        super().__init__(message)
        self.account = account
