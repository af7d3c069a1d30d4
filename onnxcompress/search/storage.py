"""Where studies live: any Optuna storage, named by a URL.

* ``sqlite:///path.db``, ``postgresql://user@host/db``, ``mysql://...``: Optuna's RDB storage
  (PostgreSQL is the many-machine choice: workers on other machines pass the same URL and
  ``--study`` and join the study);
* ``journal:///path.log`` or a path ending in ``.log`` / ``.journal``: Optuna's journal file storage
  (append-only file with file locks: processes on one machine, no database server);
* a plain path ending in ``.db`` / ``.sqlite``: that SQLite file.
"""

from __future__ import annotations

import os
from typing import Any

from onnxcompress.errors import ConfigError


def default_storage(output: str | os.PathLike[str]) -> str:
    """A SQLite file next to the output, so that rerunning the same search resumes it."""
    return "sqlite:///" + os.path.abspath(str(output) + ".search.db")


def open_storage(url: str) -> Any:
    """The Optuna storage object for ``url`` (ConfigError with what to fix on a bad URL)."""
    try:
        import optuna
        from optuna.storages import RDBStorage
        from optuna.storages.journal import JournalFileBackend, JournalStorage
    except ImportError:
        raise ConfigError("the search needs optuna: pip install 'onnxcompress[search]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = None
    if url.startswith("journal://"):
        path = url[len("journal://") :]
    elif "://" not in url and url.endswith((".log", ".journal")):
        path = url
    if path is not None:
        if not path or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ConfigError(f"--storage {url!r}: the folder of the journal file does not exist")
        return JournalStorage(JournalFileBackend(path))
    if "://" not in url:
        if url.endswith((".db", ".sqlite", ".sqlite3")):
            url = "sqlite:///" + os.path.abspath(url)
        else:
            raise ConfigError(
                f"--storage {url!r}: give a URL (sqlite:///x.db, postgresql://user@host/db, journal:///x.log) "
                "or a path ending in .db or .log"
            )
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    try:
        return RDBStorage(url, **kwargs)
    except ImportError as exc:
        raise ConfigError(
            f"--storage {url!r}: a database driver is missing ({exc}); e.g. pip install psycopg2-binary"
        ) from None
    except Exception as exc:  # sqlalchemy raises many types; one line for the user
        first = " ".join(str(exc).split())[:300]
        raise ConfigError(f"--storage {url!r}: cannot open the study storage: {first}") from None
