"""PostgreSQL persistence: tables, engine, and plain async functions per aggregate."""
