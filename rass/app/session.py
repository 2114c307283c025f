"""What each action of the browser demo does, as plain functions of the page's values.

`DemoApp` methods take the values of the page's inputs and return ``{component name: new value}``
for the components they change (images as numpy arrays, text as Markdown / HTML strings, file
lists); `rass.app.page` maps those names to gradio components. A per-visitor `state` dict holds the
loaded image, its degraded version, the SAM clicks and the display enlargement ("scale": images
smaller than `DISPLAY_SIZE` / 2 are shown enlarged by an integer factor, nearest neighbour; clicks on
them are mapped back; everything is computed and downloaded at the real size).
"""
from __future__ import annotations

import html
import os
import time
from typing import Dict, List, Optional

import numpy as np

from rass.app.inputs import DEFAULT_MAX_PIXELS, Degrader, Downloads, check_seed, load_upload
from rass.app.mgd_tab import MgdSegmenter, mgd_metrics_markdown
from rass.app.models import AppError, Loaded, Progress
from rass.app.rass_tab import RassBackend
from rass.app.sam_tab import (UNTRAINED_PLUGINS_NOTE, PerturbResult, Prompts, SamBackend, SamResult,
                              draw_perturbed, draw_prompts, mask_file_key)
from rass.evaluation.visualize import display_factor, draw, enlarge, format_score

__all__ = ["DemoApp", "METHODS", "RESULT_KEYS", "DISPLAY_SIZE", "weight_status", "sam_metrics_markdown",
           "perturb_markdown", "EXTRA_TITLE"]

METHODS = ("SAM", "GleSAM", "RobustSAM")
# Images whose longest side is below half of this are shown enlarged (integer factor, nearest neighbour).
DISPLAY_SIZE = 320
# The status line's title of an added mask of the SAM tab (`DemoApp(extra_sams=...)`).
EXTRA_TITLE = "{name} (added mask of the SAM / GleSAM tab)"
# What a new image or degradation clears on the page.
RESULT_KEYS = ("rass_clean", "rass_degraded", "rass_legend", "rass_info", "rass_files",
               "sam_SAM", "sam_GleSAM", "sam_RobustSAM", "sam_metrics", "sam_files", "sam_perturb",
               "mgd_MGD", "mgd_SAM2", "mgd_metrics", "mgd_files")


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
        mgd: the MGD-SAM2 tab's back end (`MgdSegmenter`, or why it is missing); None: no MGD-SAM2 tab.
        robustsam: RobustSAM's predictor (`rass.app.sam_tab.robustsam_predictor`, or why it is missing), a third
            mask on the SAM / GleSAM tab for the same clicks; None: no RobustSAM mask.
        extra_sams: name -> the predictor of a further mask on the SAM / GleSAM tab
            (`rass.app.sam_tab.extra_sam_predictor`: Stable-SAM, HQ-SAM, ...; or why it is missing), after
            RobustSAM's; names other than "SAM", "GleSAM" (and "RobustSAM" with `robustsam`).
    """

    def __init__(self, rass: Loaded, sam: Loaded, downloads: Downloads, max_pixels: int = DEFAULT_MAX_PIXELS,
                 degrader: Optional[Degrader] = None, mgd: Optional[Loaded] = None,
                 robustsam: Optional[Loaded] = None, extra_sams: Optional[Dict[str, Loaded]] = None) -> None:
        self.rass, self.sam, self.mgd, self.robustsam = rass, sam, mgd, robustsam
        self.extra_sams: Dict[str, Loaded] = dict(extra_sams or {})
        added = ({"RobustSAM": robustsam} if robustsam is not None else {}) | self.extra_sams
        for name, loaded in added.items():
            if loaded.backend is not None and isinstance(self.sam.backend, SamBackend):
                self.sam = Loaded(sam.choice, backend=self.sam.backend.with_extra(name, loaded.backend))
        self.downloads = downloads
        self.max_pixels = max_pixels
        self.degrader = degrader or Degrader()

    # ------------------------------------------------------------- header
    def models_markdown(self) -> str:
        """The page's plain-language line per tab: which model it runs and whether its results mean anything."""
        return "\n".join(f"- {weight_status(title, loaded)}" for title, loaded in self._tabs())

    def models_details(self) -> str:
        """The technical details (folded away on the page): configs, weight files, every random-weights note."""
        lines = []
        for title, loaded in self._tabs():
            label = title if "tab" in title else f"{title} tab"
            lines.append(f"- **{label}**: {html.escape(loaded.choice.origin)}")
            if loaded.error:
                lines.append(f"  - **not available**: {html.escape(loaded.error)}")
                continue
            backend = loaded.backend
            if isinstance(backend, SamBackend):
                lines.append(f"  - methods: {' and '.join(backend.methods)}")
            for note in backend.weight_notes:  # type: ignore[union-attr]
                lines.append(f"  - ⚠ {html.escape(note)}")
        return "\n".join(lines)

    @property
    def has_glesam(self) -> bool:
        """Whether the SAM / GleSAM tab's model gives a GleSAM mask (else SAM only; also when it failed to build)."""
        backend = self.sam.backend
        return not isinstance(backend, SamBackend) or "GleSAM" in backend.methods

    @property
    def has_robustsam(self) -> bool:
        """Whether the SAM / GleSAM tab shows a RobustSAM mask (given and built, next to a built SAM model)."""
        backend = self.sam.backend
        return isinstance(backend, SamBackend) and "RobustSAM" in backend.extra

    @property
    def extra_panels(self) -> List[str]:
        """The names of the added masks the SAM / GleSAM tab shows (RobustSAM, then `extra_sams`; built ones)."""
        backend = self.sam.backend
        return list(backend.extra) if isinstance(backend, SamBackend) else []

    @property
    def result_keys(self) -> List[str]:
        """What a new image or degradation clears: `RESULT_KEYS` and the added masks' panels."""
        return list(RESULT_KEYS) + [f"sam_{n}" for n in self.extra_panels if f"sam_{n}" not in RESULT_KEYS]

    def _sam_result_keys(self) -> List[str]:
        return [f"sam_{m}" for m in dict.fromkeys([*METHODS, *self.extra_panels])] + ["sam_metrics", "sam_files",
                                                                                         "sam_perturb"]

    def _tabs(self):
        robust = (("RobustSAM (third mask of the SAM / GleSAM tab)", self.robustsam),) if self.robustsam else ()
        extra = tuple((EXTRA_TITLE.format(name=name), loaded) for name, loaded in self.extra_sams.items())
        return (("RASS", self.rass), ("SAM / GleSAM", self.sam)) + robust + extra + \
            ((("MGD-SAM2", self.mgd),) if self.mgd else ())

    # ------------------------------------------------------------- image + degradation
    def _show(self, state: Dict, message: str) -> Dict:
        k = state.get("scale", 1)
        out = {key: None for key in self.result_keys}
        out.update({"state": state, "clean_input": enlarge(state["clean"], k),
                    "degraded_input": enlarge(state["degraded"], k),
                    "sam_canvas": draw_prompts(state["degraded"], state["prompts"], k),
                    "sam_prompts": state["prompts"].describe(), "status": message})
        box = state.get("mgd_box") or Prompts()
        out.update({"mgd_canvas": draw_prompts(state["degraded"], box, k), "mgd_box": _box_text(box)})
        return out

    def load(self, path: Optional[str], preset: str, seed: object) -> Dict:
        """A new upload (or example): read it, degrade it, reset the clicks and the results.

        Args:
            path: the uploaded file, or None when the upload was cleared.
            preset: the chosen degradation.
            seed: the degradation seed.
        """
        if not path:
            out = {key: None for key in self.result_keys}
            out.update({"state": None, "clean_input": None, "degraded_input": None, "sam_canvas": None,
                        "sam_prompts": "", "status": "Upload an image or pick an example."})
            return out
        image = load_upload(path, self.max_pixels)
        h, w = image.shape[:2]
        k = display_factor(h, w, DISPLAY_SIZE)
        state = {"name": os.path.splitext(os.path.basename(path))[0], "clean": image, "prompts": Prompts(),
                 "mgd_box": Prompts(), "scale": k}
        size = f"{w} x {h} pixels" + (f", shown enlarged {k}x: the results are computed at the real size"
                                      if k > 1 else "")
        return self._degrade(state, preset, seed, f"Loaded {os.path.basename(path)} ({size})")

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

    def run_rass(self, state: Optional[Dict], progress: Optional[Progress] = None) -> Dict:
        """RASS on the clean and the degraded image: overlays, legend, tags, time, downloads.

        Args:
            state: the page's state.
            progress: told each stage as it starts (e.g. gradio's progress bar).
        """
        backend: RassBackend = self._backend(self.rass, "RASS")
        if not state:
            raise AppError("no image yet: upload one or pick an example")
        res = backend.run(state["clean"], state["degraded"], progress=progress)
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
        k = state.get("scale", 1)
        return {"rass_clean": enlarge(res.overlays["clean"], k), "rass_degraded": enlarge(res.overlays["degraded"], k),
                "rass_legend": legend_html(res.legend), "rass_info": info, "rass_files": files,
                "rass_status": f"RASS: {len(res.legend)} class(es) in the two predictions"}

    # ------------------------------------------------------------- SAM / GleSAM
    def click(self, state: Optional[Dict], x: float, y: float, mode: str, auto: bool,
              progress: Optional[Progress] = None) -> Dict:
        """One click on the SAM image: add the point / box corner, then segment when `auto`.

        Args:
            state: the page's state.
            x, y: the clicked pixel of the shown (possibly enlarged) image.
            mode: one of `CLICK_MODES`.
            auto: segment at once when the prompts are complete.
            progress: see `segment`.
        """
        if not state:
            raise AppError("no image yet: upload one or pick an example")
        state = dict(state)
        k = state.get("scale", 1)
        x, y = (x + 0.5) / k - 0.5, (y + 0.5) / k - 0.5  # the shown pixel's centre on the image
        state["prompts"] = state["prompts"].add_click(x, y, mode)
        out = {"state": state, "sam_canvas": draw_prompts(state["degraded"], state["prompts"], k),
               "sam_prompts": state["prompts"].describe()}
        if auto and state["prompts"].ready and state["prompts"].corner is None:
            out.update(self.segment(state, progress))
        return out

    def clear_prompts(self, state: Optional[Dict]) -> Dict:
        """Forget the clicks (and the masks)."""
        if not state:
            return {"sam_prompts": ""}
        state = dict(state, prompts=Prompts())
        out = {key: None for key in self._sam_result_keys()}
        out.update({"state": state, "sam_canvas": draw_prompts(state["degraded"], state["prompts"], state.get("scale", 1)),
                    "sam_prompts": state["prompts"].describe(), "sam_status": "Prompts cleared"})
        return out

    def segment(self, state: Optional[Dict], progress: Optional[Progress] = None) -> Dict:
        """SAM and GleSAM (and RobustSAM when the page has it) on the degraded image with the clicks: masks, their
        confidence, their mutual IoUs.

        Args:
            state: the page's state.
            progress: told each stage as it starts (`SamBackend.stages`), e.g. gradio's progress bar.
        """
        backend: SamBackend = self._backend(self.sam, "SAM / GleSAM")
        if not state:
            raise AppError("no image yet: upload one or pick an example")
        res = backend.run(state["degraded"], state["prompts"], progress=progress)
        images: Dict[str, np.ndarray] = {}
        for name in res.masks:
            images[f"{mask_file_key(name)}_overlay"] = res.overlays[name]
            images[f"{mask_file_key(name)}_mask"] = res.masks[name]
        files = self.downloads.write(state["name"], images)
        out = {key: None for key in self._sam_result_keys()}
        k = state.get("scale", 1)
        for name in res.masks:
            out[f"sam_{name}"] = res.overlays[name] if k == 1 else draw(
                enlarge(state["degraded"], k), enlarge(res.masks[name], k), state["prompts"].scaled(k).as_dict(),
                backend.opacity)
        encoder = res.seconds.get("encoder", 0.0) + res.seconds.get("enhancement", 0.0)
        out.update({"sam_metrics": sam_metrics_markdown(res), "sam_files": files,
                    "sam_status": f"Segmented by {' and '.join(res.masks)} in "
                                  f"{sum(res.seconds.values()):.2f} s ({encoder:.2f} s of it reading the image)"})
        return out

    def perturb(self, state: Optional[Dict], scale: object, seed: object, progress: Optional[Progress] = None) -> Dict:
        """"Perturb my box": every model's mask with the user's box replaced by one seeded noisy draw
        (`rass.app.sam_tab.perturb_box`, HQ-SAM's box-noise form), both boxes drawn, and each mask's IoU with the
        same model's mask under the user's box (a one-draw stability). The user's box stays in the prompts: the
        next draw starts from it again.

        Args:
            state: the page's state (its prompts need a box).
            scale: the noise scale (>= 0; the page's slider gives 0-0.5).
            seed: the draw's seed (a whole number, `check_seed`).
            progress: see `segment`.
        """
        backend: SamBackend = self._backend(self.sam, "SAM / GleSAM")
        if not state:
            raise AppError("no image yet: upload one or pick an example")
        try:
            value = float(scale)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise AppError(f"box noise scale {scale!r}: expected a number >= 0") from None
        res = backend.perturb(state["degraded"], state["prompts"], value, check_seed(seed), progress=progress)
        k, prompts, image = state.get("scale", 1), state["prompts"], state["degraded"]
        out = {key: None for key in self._sam_result_keys()}
        images: Dict[str, np.ndarray] = {}
        for name, mask in res.perturbed.masks.items():
            out[f"sam_{name}"] = draw_perturbed(image, mask, prompts, res.noisy, backend.opacity, k)
            images[f"{mask_file_key(name)}_perturbed_overlay"] = draw_perturbed(image, mask, prompts, res.noisy,
                                                                                backend.opacity)
            images[f"{mask_file_key(name)}_perturbed_mask"] = mask
        out.update({"sam_canvas": draw_perturbed(image, None, prompts, res.noisy, 0.0, k),
                    "sam_perturb": perturb_markdown(res), "sam_metrics": sam_metrics_markdown(res.perturbed),
                    "sam_files": self.downloads.write(state["name"], images),
                    "sam_status": f"Your box (blue) perturbed with noise scale {res.scale:g}, seed {res.seed} "
                                  f"(orange): every mask is for the orange box"})
        return out

    # ------------------------------------------------------------- MGD-SAM2
    def mgd_click(self, state: Optional[Dict], x: float, y: float, progress: Optional[Progress] = None) -> Dict:
        """A click on the MGD-SAM2 tab's image: a corner of SAM2's box; the second corner segments at once.

        Args:
            state: the page's state.
            x, y: the clicked pixel of the shown (possibly enlarged) image.
            progress: see `mgd_segment`.
        """
        if not state:
            raise AppError("no image yet: upload one or pick an example")
        state = dict(state)
        k = state.get("scale", 1)
        x, y = (x + 0.5) / k - 0.5, (y + 0.5) / k - 0.5  # the shown pixel's centre on the image
        box = state.get("mgd_box") or Prompts()
        if box.corner is None:  # a new box starts: the old one goes
            box = Prompts()
        state["mgd_box"] = box.add_click(x, y, "box corner")
        out = {"state": state, "mgd_canvas": draw_prompts(state["degraded"], state["mgd_box"], k),
               "mgd_box": _box_text(state["mgd_box"])}
        if state["mgd_box"].box is not None:
            out.update(self.mgd_segment(state, progress))
        return out

    def mgd_clear(self, state: Optional[Dict]) -> Dict:
        """Forget SAM2's box (and SAM2's mask)."""
        if not state:
            return {"mgd_box": ""}
        state = dict(state, mgd_box=Prompts())
        return {"state": state, "mgd_canvas": draw_prompts(state["degraded"], state["mgd_box"], state.get("scale", 1)),
                "mgd_box": _box_text(state["mgd_box"]), "mgd_SAM2": None, "mgd_status": "Box cleared"}

    def mgd_segment(self, state: Optional[Dict], progress: Optional[Progress] = None) -> Dict:
        """MGD-SAM2 (prompt-free) on the degraded image, and SAM2 with the box when one is drawn: overlays, the
        masks at the image's size as downloads, areas, times and the two masks' IoU.

        Args:
            state: the page's state.
            progress: told each stage as it starts, e.g. gradio's progress bar.
        """
        if self.mgd is None:
            raise AppError("this page has no MGD-SAM2 tab")
        backend: MgdSegmenter = self._backend(self.mgd, "MGD-SAM2")
        if not state:
            raise AppError("no image yet: upload one or pick an example")
        box = state.get("mgd_box") or Prompts()
        res = backend.run(state["degraded"], box.box, progress=progress)
        images: Dict[str, np.ndarray] = {}
        for name in res.masks:
            key = name.lower().replace("-", "_")
            images[f"{key}_mask"] = res.masks[name]
            images[f"{key}_overlay"] = res.overlays[name]
        files = self.downloads.write(state["name"], images)
        k = state.get("scale", 1)
        h, w = state["degraded"].shape[:2]
        return {"mgd_MGD": enlarge(res.overlays["MGD-SAM2"], k),
                "mgd_SAM2": enlarge(res.overlays["SAM2"], k) if "SAM2" in res.overlays else None,
                "mgd_metrics": mgd_metrics_markdown(res), "mgd_files": files,
                "mgd_status": f"Segmented by {' and '.join(res.masks)}; masks at the image's size ({w} x {h} pixels) "
                              "in the downloads"}


def _box_text(box: Prompts) -> str:
    """The MGD-SAM2 tab's line about SAM2's box."""
    if box.box is not None:
        return "SAM2's box: " + ", ".join(f"{v:.0f}" for v in box.box)
    if box.corner is not None:
        return f"box corner at {box.corner[0]:.0f}, {box.corner[1]:.0f} (click the opposite corner)"
    return "No box: click two opposite corners on the image to compare with SAM2."


def sam_metrics_markdown(res: SamResult) -> str:
    """The SAM tab's table: each method's own confidence (predicted IoU, 0-1), mask area, time; the masks'
    agreement (IoU of each pair with an added model such as RobustSAM)."""
    methods = list(res.masks)
    rows = ["| | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods),
            "| confidence (the model's predicted IoU, 0-1) | "
            + " | ".join(format_score(res.iou_pred[m]) for m in methods) + " |",
            "| mask area | " + " | ".join(f"{100.0 * res.masks[m].mean():.1f} % of the image" for m in methods) + " |",
            "| time to decode the mask | " + " | ".join(f"{res.seconds[m]:.2f} s" for m in methods) + " |"]
    if res.mutual_iou is not None:
        rows.append(f"\n**Agreement of the SAM and the GleSAM mask (IoU, 0-1): {format_score(res.mutual_iou)}**")
    else:
        rows.append("\nThis model has no GleSAM enhancement: " +
                    ("SAM only." if len(methods) == 1 else "no GleSAM mask."))
    for pair, iou in res.pair_iou.items():  # the added models' (e.g. RobustSAM's) agreement with the others
        if pair != "SAM vs GleSAM":
            a, b = pair.split(" vs ")
            rows.append(f"\n**Agreement of the {a} and the {b} mask (IoU, 0-1): {format_score(iou)}**")
    rows.append("\nConfidence is the model's own guess of how good its mask is, not a measurement "
                "(no ground truth here).")
    return "\n".join(rows)


def perturb_markdown(res: PerturbResult) -> str:
    """The "perturb my box" summary: both boxes and, per model, its mask's IoU with its own mask for the user's
    box (one-draw stability) and its confidence under the perturbed box."""
    methods = list(res.stability)
    box = lambda b: ", ".join(f"{v:.0f}" for v in b)  # noqa: E731
    return "\n".join([
        f"**Perturbed box** (orange; HQ-SAM's box noise, scale {res.scale:g}, seed {res.seed}): {box(res.noisy)} "
        f"— your box (blue): {box(res.box)}", "",
        "| | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods),
        "| IoU with its own mask for your box (one-draw stability, 0-1; 1 = unchanged) | "
        + " | ".join(format_score(res.stability[m]) for m in methods) + " |",
        "| confidence under the perturbed box | "
        + " | ".join(format_score(res.perturbed.iou_pred[m]) for m in methods) + " |"])


def weight_status(title: str, loaded: Loaded) -> str:
    """One plain-language Markdown line on a tab's model, e.g. "**GleSAM**: demo weights (random) — results
    are not meaningful" (the configs and weight files are in `DemoApp.models_details`).

    Args:
        title: the tab ("RASS", "SAM / GleSAM").
        loaded: its back end, or why it could not be built.
    """
    backend = loaded.backend
    if isinstance(backend, SamBackend):
        title = " and ".join(backend.own_methods)  # an added model (RobustSAM) has its own line
    elif isinstance(backend, MgdSegmenter):
        title = " and ".join(backend.methods)
    if loaded.error:
        return f"**{title}**: not available: its model could not be built (the technical details say why)."
    source = loaded.choice.source
    notes = list(backend.weight_notes)  # type: ignore[union-attr]
    untrained_plugins = UNTRAINED_PLUGINS_NOTE in notes  # not random: Stable-SAM's plugins then leave SAM's mask
    partly_random = any(n != UNTRAINED_PLUGINS_NOTE for n in notes)
    if source == "random":
        return (f"**{title}**: demo weights (random) — results are not meaningful. `scripts/quickstart.sh` trains "
                "a small model in minutes; docs/MODEL_ZOO.md lists the released weights.")
    if source == "quickstart":
        text = (f"**{title}**: the quickstart's small model, trained on synthetic images — it shows how the "
                "method works, not the paper's accuracy")
    else:
        text = f"**{title}**: your model ({html.escape(os.path.basename(loaded.choice.config_file))})"
    if partly_random:
        text += " — but some parts have random weights, so results are not meaningful (see the details)"
    if untrained_plugins:
        text += " — its Stable-SAM plugins are untrained (no plugin file), so its mask is SAM's"
    return text + "."


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
