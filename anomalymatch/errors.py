"""Errors about the user's input: opening image sources, reading items from them, decoding images, and
assembling a training set from them. One leaf module.

It imports nothing from ``anomalymatch``, so sources, decoders and transforms all import their
errors from here without an import circle. The modules that used to define them import them
back, so ``anomalymatch.sources.SourceError``, ``anomalymatch.transform.DecodeError`` and
``anomalymatch.fits.FitsError`` keep working.

- ``SourceError``: a source cannot be opened at all; the command fails with its message.
- ``SourceReadError`` and ``DecodeError``: one image cannot be read or decoded; ``reason`` goes
  into the skip report and the image is skipped, never dropped silently.
- ``FitsError``: a FITS file holds no usable image; decoding turns it into a ``DecodeError``.
- ``TrainingInputError``: the labels and images given cannot make a training set (one class only, an
  empty pool).
"""

from __future__ import annotations


class SourceError(ValueError):
    """A source cannot be opened as asked (missing path, ambiguous dataset, duplicate ids)."""


class SourceReadError(OSError):
    """One item could not be read from its container; ``reason`` goes into the skip report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DecodeError(ValueError):
    """An image could not be decoded or converted; ``reason`` says why (it goes into skip reports)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ImageTooLargeError(DecodeError):
    """An image declares more pixels than allowed; it was refused before its data was inflated or decoded."""


class FitsError(ValueError):
    """A FITS file holds no usable image (no image HDU with data, or an unsupported shape)."""


class TrainingInputError(ValueError):
    """The labels and images given cannot make a training set (one class only, an empty pool)."""
