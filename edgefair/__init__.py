"""edgefair: check what compression does to each group before a model ships to an edge CPU."""

__version__ = "0.3.1"
