"""Integrity checks around a download: pins, model signatures, the record.

When a pin or a signature check applies to a ``SRC_URI DEST`` pair, the pair
is downloaded into a staging directory inside DEST (:mod:`.staging`),
verified (:mod:`.pins`, :mod:`.signing`) and only then moved into DEST, so a
model server never sees an unverified model. :mod:`.record` describes what
was downloaded. :mod:`.options` reads the flags and variables; :mod:`.pair`
ties the steps together for the runner.
"""
