"""`miro`: the command line, one module per concern. Control commands import only wire/ (and click), so
they answer without torch; `miro run` and friends import the library in-process."""
