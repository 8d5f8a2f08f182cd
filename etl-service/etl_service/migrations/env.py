"""Alembic environment: migrate the connection StateStore hands over.

Run from code (`StateStore`), not the alembic CLI, so the same migrations
work on SQLite and PostgreSQL with whatever URL the service is given.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic -x url=...` from a shell, for operators
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the state database as: alembic -x url=<SQLAlchemy URL> upgrade head")
    with sa.create_engine(url).begin() as conn:
        context.configure(connection=conn, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
