"""
Durable storage both roles use: the SQLite store with its writer thread
and group commit (L{tvlink.store.sqlite}), and the payment ledger's
statements and schema (L{tvlink.store.ledgersql}).
"""
