"""
The command line: twistd's options and C{makeService} (L{tvlink.cli.tap}),
the C{tvlink} admin command (L{tvlink.cli.main}) and the sandbox that runs
both roles in one process (L{tvlink.cli.sandbox}).
"""
