"""
End-to-end tests: real twistd processes of both roles on 127.0.0.1, faults
and hostile peers, and log output checked for card numbers.
"""
