"""
Durable storage both roles use: the writer store with its thread and group
commit (L{tvlink.store.writer}) on SQLite (L{tvlink.store.sqlite}) or
PostgreSQL (L{tvlink.store.postgresql}), and the payment ledger's
statements and schemas (L{tvlink.store.ledgersql}).
"""
