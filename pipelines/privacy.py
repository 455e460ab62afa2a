"""Pseudonymous identifiers for everything persisted under data/features.

User and exposure ids are replaced by salted SHA-256 pseudonyms before any feature file is
written. The salt is a secret: it comes from CAMPAIGNOPS_ID_SALT or, when that is unset, from
`<state_dir>/id_salt` (git-ignored, mode 0600), generated on first use. It is never written
into SQL text, logs, metadata or artifacts: DuckDB receives it as a bound session variable.

The same salt yields the same pseudonyms across runs (features stay reproducible and joinable
with truth/score artifacts); rotating it re-keys every pseudonym. Scoring runs inside the
trusted boundary and keeps real user ids (it must target real users); nothing it computes is
persisted with the features.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import duckdb

SALT_ENV = "CAMPAIGNOPS_ID_SALT"
SALT_FILE = "id_salt"
_VAR = "campaignops_id_salt"
PSEUDONYM_HEX = 32  # 128 bits of the digest: collisions are negligible at any realistic user count


def id_salt(settings) -> str:
    """The pseudonymization salt: the environment variable, else the state-dir file (created
    once, 0600, atomically so concurrent first uses agree)."""
    env = os.environ.get(SALT_ENV) or getattr(settings, "env", {}).get(SALT_ENV)
    if env:
        return env
    path = Path(settings.state_dir) / SALT_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
    salt = path.read_text().strip()
    if not salt:
        raise RuntimeError(f"{path} is empty; delete it or set {SALT_ENV}")
    return salt


def bind_salt(con: duckdb.DuckDBPyConnection, salt: str) -> None:
    """Make the salt available to SQL as a session variable (never in statement text)."""
    con.execute(f"SET VARIABLE {_VAR} = ?", [salt])


def pseudonym_sql(expr: str, kind: str) -> str:
    """SQL expression pseudonymizing `expr` (a VARCHAR) of the given kind ('u' user, 'x' exposure).
    The kind is part of the hashed message, so a user id and an exposure id never collide."""
    return (f"('{kind}_' || left(sha256(getvariable('{_VAR}') || chr(31) || '{kind}' || chr(31) || ({expr})), "
            f"{PSEUDONYM_HEX}))")


def pseudonymize(salt: str, value: str, kind: str) -> str:
    """Python twin of pseudonym_sql (tests, one-off look-ups)."""
    import hashlib

    digest = hashlib.sha256(f"{salt}\x1f{kind}\x1f{value}".encode()).hexdigest()
    return f"{kind}_{digest[:PSEUDONYM_HEX]}"


def bucket_sql(pseudonym_expr: str, n: int) -> str:
    """Chunk number 0..n-1 from a pseudonym: contiguous ranges of its leading hex digits, so
    ordering by (chunk, pseudonym) equals ordering by pseudonym whatever n is."""
    return f"(('0x' || substr({pseudonym_expr}, 3, 8))::UBIGINT * {int(n)} // 4294967296)"
