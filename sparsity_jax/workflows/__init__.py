"""What a command does, as library functions returning typed results (a notebook calls
these; the commands parse, call one, print)."""
