"""A labelling campaign's images: which sources it reads, at which preprocessing, and reading one image by id.

The label store's campaign row holds ``{"sources": [absolute paths], "preprocess": {...}}``; its images are
registered in the store, so only they can be labelled. The retraining watcher loads the campaign's images
from these sources; the service serves the original file of a candidate from them. No torch, no mlflow.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomalymatch.decode import has_image_magic, sniff_format
from anomalymatch.errors import SourceError
from anomalymatch.labelstore import LabelStore, UnknownCampaignError
from anomalymatch.preprocessing import PreprocessSpec
from anomalymatch.sources import ImageSource, open_sources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CampaignImages:
    """Where a campaign's images live and the preprocessing it trains with (None = the app config's)."""

    name: str
    sources: tuple[str, ...]
    preprocess: PreprocessSpec | None = None

    def open(self) -> ImageSource:
        return open_sources(list(self.sources))


def setup_campaign(
    store: LabelStore,
    name: str,
    sources: Sequence[str | os.PathLike],
    preprocess: PreprocessSpec | None = None,
    notes: str = "",
) -> tuple[CampaignImages, int]:
    """Create (or reuse) campaign ``name`` over ``sources`` and register every image id in them.
    Returns the campaign and how many ids were new. A campaign of that name over other sources is refused."""
    paths = tuple(str(Path(s).expanduser().resolve()) for s in sources)
    if not paths:
        raise ValueError("a campaign needs at least one image source (folder, zip, HDF5 file)")
    config = {"sources": list(paths), "preprocess": preprocess.to_dict() if preprocess else None}
    stored = store.create_campaign(name, config, notes=notes, exist_ok=True)
    if tuple(stored.config.get("sources", ())) != paths:
        raise ValueError(
            f"campaign {name!r} already reads {stored.config.get('sources')}, not {list(paths)}; "
            "use another campaign name"
        )
    with open_sources(list(paths)) as source:
        added = store.register_images(source.ids, campaign=name)
    return campaign_images(store, name), added


def campaign_images(store: LabelStore, name: str = "") -> CampaignImages:
    """Campaign ``name`` (empty = the only campaign in the store) as ``CampaignImages``."""
    if not name:
        campaigns = store.list_campaigns()
        if len(campaigns) != 1:
            raise UnknownCampaignError(
                f"the label store holds {len(campaigns)} campaigns ({[c.name for c in campaigns]}); "
                "set retrain.campaign to pick one"
                if campaigns
                else "the label store holds no campaign; create one with `anomalymatch retrain --setup "
                "--campaign NAME --images SOURCE [--labels CSV]`"
            )
        name = campaigns[0].name
    config = store.get_campaign(name).config
    sources = config.get("sources")
    if not sources:
        raise UnknownCampaignError(
            f"campaign {name!r} records no image sources; it was not created by "
            "setup_campaign (`anomalymatch retrain --setup`)"
        )
    spec = config.get("preprocess")
    return CampaignImages(name, tuple(sources), PreprocessSpec.from_dict(dict(spec)) if spec else None)


@dataclass(frozen=True)
class ImageFile:
    """One image as served: its bytes, media type and a file name for saving it."""

    data: bytes
    media_type: str
    filename: str


_MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "tiff": "image/tiff", "fits": "application/fits"}


class ImageLibrary:
    """Reads labelled-or-candidate images by id from every campaign's sources (opened once, on first use).

    ``roots`` bounds what may be read (a service passes its data roots): a campaign whose sources lie
    outside them is not opened, and folder entries that resolve outside (symlinks) are never read. Without
    ``roots`` each campaign's own source paths are its roots, so a symlink inside still cannot lead out.
    Only files that are images (by their bytes) are served, with the media type of the sniffed format."""

    def __init__(self, store: LabelStore, roots: Sequence[str | os.PathLike] | None = None) -> None:
        self.store = store
        self.roots = None if roots is None else [str(r) for r in roots]
        self._sources: dict[str, ImageSource] = {}
        self._specs: dict[int, PreprocessSpec] = {}  # id(source) -> its campaign's spec, when it combines bands
        self._refused: set[str] = set()  # campaigns whose sources may not be read: not scanned again
        self._lock = threading.Lock()

    def _source_for(self, image_id: str) -> ImageSource | None:
        with self._lock:
            for source in self._sources.values():
                if _holds(source, image_id):
                    return source
            for campaign in self.store.list_campaigns():
                if (
                    campaign.name in self._sources
                    or campaign.name in self._refused
                    or not campaign.config.get("sources")
                ):
                    continue
                paths = list(campaign.config["sources"])
                try:
                    source = open_sources(paths, roots=self.roots if self.roots is not None else paths)
                except SourceError as exc:  # outside the roots, or gone: its images cannot be served
                    log.warning("campaign %s: its sources are not served: %s", campaign.name, exc)
                    self._refused.add(campaign.name)
                    continue
                self._sources[campaign.name] = source
                spec = campaign.config.get("preprocess")
                if spec and spec.get("band_matrix"):
                    self._specs[id(source)] = PreprocessSpec.from_dict(spec)
                if _holds(source, image_id):
                    return source
        return None

    def read(self, image_id: str, render_png: bool = False) -> ImageFile:
        """The original file bytes of ``image_id`` (raw HDF5 rows, and any image with ``render_png``, as a
        display PNG at native resolution). ``KeyError`` when no campaign source holds it, ``DecodeError``
        when its bytes are not an image (or, with ``render_png``, cannot be decoded)."""
        item, spec = self._item_spec(image_id)
        base = image_id.rsplit("/", 1)[-1] or "image"
        if isinstance(item, np.ndarray) or render_png:
            return ImageFile(_to_png(item, image_id, spec), "image/png", f"{Path(base).stem or 'image'}.png")
        data = bytes(item)
        if data[:2] == b"\x1f\x8b" and has_image_magic(data):  # gzip: a .fits.gz, served as it is stored
            return ImageFile(data, "application/gzip", base)
        return ImageFile(data, _MEDIA_TYPES[sniff_format(data, base).value], base)

    def read_display(self, image_id: str) -> np.ndarray:
        """What ``image_id`` shows before the display transform (``anomalymatch.display``): FITS values as
        stored, HDF5 rows channel-last, other files decoded RGB. ``KeyError`` / ``DecodeError`` as ``read``."""
        from anomalymatch.display import display_pixels

        item, spec = self._item_spec(image_id)
        return display_pixels(item, image_id, spec)

    def read_model_input(self, image_id: str, spec: PreprocessSpec) -> np.ndarray:
        """``image_id`` as a model at ``spec`` sees it: uint8 (size, size, 3). ``KeyError`` / ``DecodeError``."""
        from anomalymatch.decode import decode_image
        from anomalymatch.transform import to_model_size

        item = self._item(image_id)
        if isinstance(item, np.ndarray):
            return to_model_size(item, spec)
        return decode_image(bytes(item), image_id, spec)

    def _item(self, image_id: str) -> bytes | np.ndarray:
        return self._item_spec(image_id)[0]

    def _item_spec(self, image_id: str) -> tuple[bytes | np.ndarray, PreprocessSpec | None]:
        """The stored item and, for a campaign that combines bands, its spec (to show it as the model does)."""
        source = self._source_for(image_id)
        if source is None:
            raise KeyError(f"image {image_id!r} is in no campaign's sources")
        return source.read(image_id), self._specs.get(id(source))

    def close(self) -> None:
        with self._lock:
            for source in self._sources.values():
                source.close()
            self._sources.clear()
            self._specs.clear()


def _holds(source: ImageSource, image_id: str) -> bool:
    try:
        source.index(image_id)
    except KeyError:
        return False
    return True


def _to_png(item: bytes | np.ndarray, name: str, spec: PreprocessSpec | None = None) -> bytes:
    from PIL import Image

    from anomalymatch.decode import decode_composite, decode_native
    from anomalymatch.transform import channel_last, to_rgb, to_uint8

    if spec is not None:
        pixels = decode_composite(item, name, spec)
    elif isinstance(item, np.ndarray):
        pixels = to_rgb(to_uint8(channel_last(item)))
    else:
        pixels = decode_native(item, name)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
