"""One module per `edgevoice` command; each has `register(subparsers)`.

`edgevoice.cli` builds the parser from them and turns failures into exit codes.
"""
