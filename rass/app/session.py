"""What each action of the browser demo does, as plain functions of the page's values.

`DemoApp` methods take the values of the page's inputs and return ``{component name: new value}``
for the components they change (images as numpy arrays, text as Markdown / HTML strings, file
lists); `rass.app.page` maps those names to gradio components. A per-visitor `state` dict holds the
loaded image, its degraded version and the SAM clicks.
"""
from __future__ import annotations

import html
import os
import time
from typing import Dict, List, Optional

import numpy as np

from rass.app.inputs import DEFAULT_MAX_PIXELS, Degrader, Downloads, check_seed, load_upload
from rass.app.models import AppError, Loaded
from rass.app.rass_tab import RassBackend
from rass.app.sam_tab import Prompts, SamBackend, draw_prompts

__all__ = ["DemoApp", "METHODS", "RESULT_KEYS"]

METHODS = ("SAM", "GleSAM")
# What a new image or degradation clears on the page.
RESULT_KEYS = ("rass_clean", "rass_degraded", "rass_legend", "rass_info", "rass_files",
               "sam_SAM", "sam_GleSAM", "sam_metrics", "sam_files")


def error_markdown(message: str) -> str:
    """An error message for a status box (Markdown, the message escaped)."""
    return f"**Error:** {html.escape(message)}"


class DemoApp:
    """The demo's actions over the two tabs' back ends.

    Args:
        rass: the RASS tab's back end (or why it is missing).
        sam: the SAM / GleSAM tab's back end (or why it is missing).
        downloads: where download files are written.
        max_pixels: the largest accepted upload (width x height).
        degrader: the degradation engines (default: a new `Degrader`).
    """

    def __init__(self, rass: Loaded, sam: Loaded, downloads: Downloads, max_pixels: int = DEFAULT_MAX_PIXELS,
                 degrader: Optional[Degrader] = None) -> None:
        self.rass, self.sam = rass, sam
        self.downloads = downloads
        self.max_pixels = max_pixels
        self.degrader = degrader or Degrader()

    # ------------------------------------------------------------- header
    def models_markdown(self) -> str:
        """The page's description of the two models (with every random-weights note)."""
        lines = []
        for title, loaded in (("RASS tab", self.rass), ("SAM / GleSAM tab", self.sam)):
            lines.append(f"- **{title}**: {html.escape(loaded.choice.origin)}")
            if loaded.error:
                lines.append(f"  - **not available**: {html.escape(loaded.error)}")
                continue
            backend = loaded.backend
            if isinstance(backend, SamBackend):
                lines.append(f"  - methods: {' and '.join(backend.methods)}")
            for note in backend.weight_notes:  # type: ignore[union-attr]
                lines.append(f"  - ⚠ {html.escape(note)}")
        return "\n".join(lines)

    # ------------------------------------------------------------- image + degradation
    def _show(self, state: Dict, message: str) -> Dict:
        out = {key: None for key in RESULT_KEYS}
        out.update({"state": state, "clean_input": state["clean"], "degraded_input": state["degraded"],
                    "sam_canvas": draw_prompts(state["degraded"], state["prompts"]),
                    "sam_prompts": state["prompts"].describe(), "status": message})
        return out

    def load(self, path: Optional[str], preset: str, seed: object) -> Dict:
        """A new upload (or example): read it, degrade it, reset the clicks and the results.

        Args:
            path: the uploaded file, or None when the upload was cleared.
            preset: the chosen degradation.
            seed: the degradation seed.
        """
        if not path:
            out = {key: None for key in RESULT_KEYS}
            out.update({"state": None, "clean_input": None, "degraded_input": None, "sam_canvas": None,
                        "sam_prompts": "", "status": "Upload an image or pick an example."})
            return out
        image = load_upload(path, self.max_pixels)
        state = {"name": os.path.splitext(os.path.basename(path))[0], "clean": image, "prompts": Prompts()}
        return self._degrade(state, preset, seed, f"Loaded {os.path.basename(path)} "
                                                  f"({image.shape[1]} x {image.shape[0]})")

    def degrade(self, state: Optional[Dict], preset: str, seed: object) -> Dict:
        """Another degradation or seed for the loaded image (the clicks are kept)."""
        if not state:
            return {"status": "Upload an image or pick an example first."}
        return self._degrade(dict(state), preset, seed, "")

    def _degrade(self, state: Dict, preset: str, seed: object, prefix: str) -> Dict:
        start = time.perf_counter()
        state["degraded"] = self.degrader(state["clean"], preset, seed)
        state["preset"], state["seed"] = preset, check_seed(seed)
        what = "no degradation" if preset == "none" else \
            f"degraded with {preset}, seed {state['seed']}, in {time.perf_counter() - start:.2f} s"
        return self._show(state, f"{prefix}; {what}" if prefix else what.capitalize())

    # ------------------------------------------------------------- RASS
    def _backend(self, loaded: Loaded, tab: str):
        if loaded.error:
            raise AppError(f"the {tab} tab has no model: {loaded.error}")
        return loaded.backend

    def run_rass(self, state: Optional[Dict]) -> Dict:
        """RASS on the clean and the degraded image: overlays, legend, tags, time, downloads."""
        backend: RassBackend = self._backend(self.rass, "RASS")
        if not state:
            raise AppError("no image yet: upload one or pick an example")
        res = backend.run(state["clean"], state["degraded"])
        level = state["preset"] if state["preset"] == "none" else f"{state['preset']}_s{state['seed']}"
        files = self.downloads.write(state["name"], {
            "overlay_clean": res.overlays["clean"], f"overlay_{level}": res.overlays["degraded"],
            "labels_clean": res.labels["clean"], f"labels_{level}": res.labels["degraded"],
            level: state["degraded"]})
        info = "\n".join([
            f"- **tags (clean)**: {html.escape(res.tags['clean'])}",
            f"- **tags (degraded)**: {html.escape(res.tags['degraded'])}",
            f"- **time**: clean {res.seconds['clean']:.2f} s, degraded {res.seconds['degraded']:.2f} s "
            f"({backend.predictor.device.type})",
        ])
        return {"rass_clean": res.overlays["clean"], "rass_degraded": res.overlays["degraded"],
                "rass_legend": legend_html(res.legend), "rass_info": info, "rass_files": files,
                "rass_status": f"RASS: {len(res.legend)} class(es) in the two predictions"}

    # ------------------------------------------------------------- SAM / GleSAM
    def click(self, state: Optional[Dict], x: float, y: float, mode: str, auto: bool) -> Dict:
        """One click on the SAM image: add the point / box corner, then segment when `auto`."""
        if not state:
            raise AppError("no image yet: upload one or pick an example")
        state = dict(state)
        state["prompts"] = state["prompts"].add_click(x, y, mode)
        out = {"state": state, "sam_canvas": draw_prompts(state["degraded"], state["prompts"]),
               "sam_prompts": state["prompts"].describe()}
        if auto and state["prompts"].ready and state["prompts"].corner is None:
            out.update(self.segment(state))
        return out

    def clear_prompts(self, state: Optional[Dict]) -> Dict:
        """Forget the clicks (and the masks)."""
        if not state:
            return {"sam_prompts": ""}
        state = dict(state, prompts=Prompts())
        out = {key: None for key in ("sam_SAM", "sam_GleSAM", "sam_metrics", "sam_files")}
        out.update({"state": state, "sam_canvas": draw_prompts(state["degraded"], state["prompts"]),
                    "sam_prompts": state["prompts"].describe(), "sam_status": "Prompts cleared"})
        return out

    def segment(self, state: Optional[Dict]) -> Dict:
        """SAM and GleSAM on the degraded image with the clicks: masks, predicted IoUs, their mutual IoU."""
        backend: SamBackend = self._backend(self.sam, "SAM / GleSAM")
        if not state:
            raise AppError("no image yet: upload one or pick an example")
        res = backend.run(state["degraded"], state["prompts"])
        images: Dict[str, np.ndarray] = {}
        for name in res.masks:
            images[f"{name.lower()}_overlay"] = res.overlays[name]
            images[f"{name.lower()}_mask"] = res.masks[name]
        files = self.downloads.write(state["name"], images)
        rows = ["| | " + " | ".join(res.masks) + " |", "|---|" + "---|" * len(res.masks),
                "| predicted IoU | " + " | ".join(f"{res.iou_pred[m]:.3f}" for m in res.masks) + " |",
                "| mask area | " + " | ".join(f"{100.0 * res.masks[m].mean():.1f} %" for m in res.masks) + " |",
                f"| time{' (the shared image encoder under SAM)' if len(res.masks) > 1 else ''} | "
                + " | ".join(f"{res.seconds[m]:.2f} s" for m in res.masks) + " |"]
        if res.mutual_iou is not None:
            rows.append(f"\n**IoU of the SAM and the GleSAM mask: {res.mutual_iou:.3f}**")
        else:
            rows.append("\nGleSAM is not enabled in this config (MODEL.GLESAM.ENHANCE False): SAM only.")
        out = {f"sam_{m}": res.overlays.get(m) for m in METHODS}
        out.update({"sam_metrics": "\n".join(rows), "sam_files": files,
                    "sam_status": f"Segmented by {' and '.join(res.masks)} in "
                                  f"{sum(res.seconds.values()):.2f} s"})
        return out


def legend_html(rows: List) -> str:
    """The RASS legend: a colour swatch, the class and its share of the clean and the degraded image."""
    if not rows:
        return "<p>No class predicted.</p>"
    cells = []
    for name, (r, g, b), clean, degraded in rows:
        swatch = (f'<span style="display:inline-block;width:14px;height:14px;margin-right:6px;'
                  f'vertical-align:middle;background:rgb({r},{g},{b});border:1px solid #555"></span>')
        cells.append(f"<tr><td>{swatch}{html.escape(name)}</td><td>{clean:.1f} %</td><td>{degraded:.1f} %</td></tr>")
    return ('<table class="rass-legend"><thead><tr><th>class</th><th>clean</th><th>degraded</th></tr></thead>'
            f"<tbody>{''.join(cells)}</tbody></table>")
