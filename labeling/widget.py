"""A Jupyter labelling widget in the spirit of the paper's GUI (optional extra ``anomalymatch[notebook]``).

    from labeling import Client
    from labeling.widget import LabelWidget
    LabelWidget(Client("http://127.0.0.1:3000", token="..."), n=20).show()

One candidate at a time from the service, shown with a display stretch (linear, log, asinh, zscale),
brightness, contrast, channel toggles and invert, or with the served model's occlusion map ("why this
score"). The buttons, or the keys ``a`` (anomaly), ``n`` (nominal), ``s`` (skip) and ``b`` (back), post
each decision at once (nothing waits in the notebook to be lost). With ``test_set`` ({image id: label}
of labelled images the model has not trained on) the current model's ROC and PR curves are shown too.
The display transform is ``anomalymatch.display`` (plain numpy, shared with the web app).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from anomalymatch.display import STRETCHES, adjust_image, display_data, to_png  # noqa: F401 (re-exported)

KEYS = {"a": "anomaly", "n": "nominal", "s": "skip", "b": "back"}


class LabelWidget:
    """Label the service's candidates one by one; ``decisions`` holds what was posted ({id: label})."""

    def __init__(
        self,
        client: Any,
        n: int = 20,
        strategy: str = "top",
        user: str = "",
        test_set: Mapping[str, str] | None = None,
        size: int = 320,
    ) -> None:
        try:
            import ipywidgets as w
        except ImportError as exc:
            raise ImportError(
                "the labelling widget needs ipywidgets and ipyevents: pip install 'anomalymatch[notebook]'"
            ) from exc
        self.client, self.user = client, user
        self.rows = client.candidates(n, strategy)
        self.position = 0
        self.decisions: dict[str, str] = {}
        self._data: dict[str, np.ndarray] = {}
        self.image = w.Image(format="png", width=size, height=size)
        self.caption = w.HTML()
        self.stretch = w.Dropdown(options=list(STRETCHES), value="linear", description="stretch")
        self.brightness = w.FloatSlider(value=0.0, min=-1.0, max=1.0, step=0.05, description="brightness")
        self.contrast = w.FloatSlider(value=1.0, min=0.1, max=5.0, step=0.05, description="contrast")
        self.channels = [w.ToggleButton(value=True, description=c, layout=w.Layout(width="40px")) for c in "RGB"]
        self.invert = w.Checkbox(value=False, description="invert")
        self.saliency = w.Checkbox(value=False, description="why this score")  # the service's occlusion map
        self.buttons = {action: w.Button(description=f"{action.capitalize()} ({key})") for key, action in KEYS.items()}
        self.buttons["anomaly"].button_style, self.buttons["nominal"].button_style = "danger", "success"
        for action, button in self.buttons.items():
            button.on_click(lambda _b, a=action: self.press(a))
        for control in (self.stretch, self.brightness, self.contrast, self.invert, self.saliency, *self.channels):
            control.observe(lambda _change: self.render(), names="value")
        self.roc, self.pr = w.Image(format="png"), w.Image(format="png")
        controls = w.VBox(
            [self.stretch, self.brightness, self.contrast, w.HBox([*self.channels, self.invert]), self.saliency]
        )
        self.box = w.VBox(
            [
                w.HBox([self.image, controls]),
                self.caption,
                w.HBox(list(self.buttons.values())),
                w.HBox([self.roc, self.pr]),
            ]
        )
        self._keyboard = self._listen_to_keys(self.box)
        if test_set:
            self.show_curves(test_set)
        self.render()

    def _listen_to_keys(self, box: Any) -> Any:
        try:
            from ipyevents import Event
        except ImportError:
            return None  # buttons still work; keys need ipyevents
        event = Event(source=box, watched_events=["keydown"])
        event.on_dom_event(lambda e: self.key(e.get("key", "")))
        return event

    # -- state --------------------------------------------------------------------------------------------------
    @property
    def current(self) -> dict[str, Any] | None:
        return self.rows[self.position] if self.position < len(self.rows) else None

    def key(self, key: str) -> None:
        """A keyboard shortcut (a, n, s, b); other keys are ignored."""
        if key.lower() in KEYS:
            self.press(KEYS[key.lower()])

    def press(self, action: str) -> None:
        """anomaly / nominal: post that label for the current image and move on; skip; back."""
        if action == "back":
            self.position = max(self.position - 1, 0)
        elif action == "skip":
            self.position = min(self.position + 1, len(self.rows))
        elif action in ("anomaly", "nominal"):
            row = self.current
            if row is None:
                return
            self.client.label({row["image_id"]: action}, user=self.user)
            self.decisions[row["image_id"]] = action
            self.position += 1
        else:
            raise ValueError(f"unknown action {action!r}; use one of {sorted(KEYS.values())}")
        self.render()

    # -- drawing ------------------------------------------------------------------------------------------------
    def pixels(self) -> np.ndarray | None:
        """The current image after the display controls (None when every candidate is done)."""
        row = self.current
        if row is None:
            return None
        image_id = row["image_id"]
        if image_id not in self._data:
            self._data[image_id] = display_data(self.client.image(image_id), image_id)
        return adjust_image(
            self._data[image_id],
            self.stretch.value,
            self.brightness.value,
            self.contrast.value,
            [c.value for c in self.channels],
            self.invert.value,
        )

    def render(self) -> None:
        pixels = self.pixels()
        if pixels is None:
            self.caption.value = f"all {len(self.rows)} candidates seen; {len(self.decisions)} labelled"
            return
        row = self.current
        if self.saliency.value:
            self.image.value = self.client.saliency(row["image_id"], self.stretch.value)
        else:
            self.image.value = to_png(pixels)
        done = self.decisions.get(row["image_id"], "")
        self.caption.value = (
            f"<b>{row['image_id']}</b> &mdash; candidate {self.position + 1} of {len(self.rows)}, "
            f"score {row['score']:.4f} (model version {row.get('model_version', '?')})"
            + (f", labelled <i>{done}</i>" if done else "")
        )

    def show_curves(self, test_set: Mapping[str, str]) -> dict:
        """Score ``test_set``'s images with the served model; show its ROC and PR curves. Returns the figures."""
        from anomalymatch.labels import Label, parse_label
        from anomalymatch.plots import curve_figures
        from serving.client import score_bytes

        ids = list(test_set)
        truth = np.asarray([parse_label(str(test_set[i])) is Label.ANOMALY for i in ids], dtype=np.int64)
        rows = score_bytes(self.client.url, [(i, self.client.image(i)) for i in ids])
        scores = np.asarray([r["score"] for r in rows])
        figures = curve_figures(truth, scores, np.asarray(ids, dtype=object))
        for key, view in (("roc", self.roc), ("pr", self.pr)):
            if key in figures:
                buf = io.BytesIO()
                figures[key].savefig(buf, format="png", dpi=80)
                view.value = buf.getvalue()
        return figures

    def show(self) -> Any:
        from IPython.display import display

        display(self.box)
        return self.box
