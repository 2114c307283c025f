"""The browser demo's gradio page: components, layout and the wiring of `DemoApp`'s actions.

Every action returns ``{component name: value}``; `_bind` turns that into gradio outputs (components
it does not name are left as they are) and turns any exception into a message in the action's
status box, so a bad upload or a missing model never shows a traceback and the server keeps serving.
Element ids (``elem_id``) are the component names, which the browser test relies on.
"""
import logging
import os
from typing import Callable, Dict, List, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home; the machine may be offline

import gradio as gr  # noqa: E402

from rass.app.inputs import DEGRADATIONS  # noqa: E402
from rass.app.models import user_message  # noqa: E402
from rass.app.sam_tab import CLICK_MODES  # noqa: E402
from rass.app.session import DemoApp, error_markdown  # noqa: E402

__all__ = ["build_page", "THEME"]

logger = logging.getLogger(__name__)

# System fonts only: the default theme would fetch Google fonts.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
CSS = """
.rass-legend td, .rass-legend th { padding: 2px 10px; }
#status, #rass_status, #sam_status { min-height: 1.5em; }
"""
INTRO = """# RASS demo: segmentation of low-quality photos
Upload a photo (or pick an example), choose a degradation, then compare **RASS** semantic segmentation of the
clean and the degraded image, or click prompts for **SAM / GleSAM** on the degraded image."""


def _failure(exc: BaseException) -> str:
    message = user_message(exc)
    if message is None:
        logger.exception("demo action failed")
        return error_markdown(f"internal error ({type(exc).__name__}: {exc}); the server log has the traceback")
    return error_markdown(message)


def _bind(components: Dict[str, gr.components.Component], outputs: Sequence[str], status: str,
          action: Callable[..., Dict]) -> Callable:
    """A gradio handler: `action(*inputs)` -> {name: value} in the order of `outputs`; an exception
    becomes an error message in `status` (which must be among `outputs`)."""
    def handler(*args):
        try:
            values = action(*args)
        except Exception as e:  # noqa: BLE001 - shown on the page
            values = {status: _failure(e)}
        return [values[name] if name in values else gr.skip() for name in outputs]
    handler.__name__ = getattr(action, "__name__", "action")
    return handler


def build_page(app: DemoApp, examples: List[str]) -> gr.Blocks:
    """The demo page.

    Args:
        app: the actions and back ends.
        examples: paths of the bundled example images.
    """
    c: Dict[str, gr.components.Component] = {}
    with gr.Blocks(title="RASS demo", analytics_enabled=False) as page:
        state = gr.State(None)
        c["state"] = state
        gr.Markdown(INTRO)
        c["models"] = gr.Markdown(app.models_markdown(), elem_id="models")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                c["upload"] = gr.File(label="Your image", file_types=["image"], elem_id="upload")
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[c["upload"]], label="Examples")
                c["degradation"] = gr.Radio(list(DEGRADATIONS), value="lqseg_3", label="Degradation",
                                            info="LQSeg levels 1-3 (GleSAM's test sets) or RASS's training mix",
                                            elem_id="degradation")
                c["seed"] = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
            c["clean_input"] = gr.Image(label="Clean", interactive=False, format="png", elem_id="clean_input")
            c["degraded_input"] = gr.Image(label="Degraded", interactive=False, format="png",
                                           elem_id="degraded_input")
        c["status"] = gr.Markdown("Upload an image or pick an example.", elem_id="status")
        with gr.Tabs():
            with gr.Tab("RASS", id="rass_tab"):
                c["run_rass"] = gr.Button("Segment the clean and the degraded image", variant="primary",
                                          elem_id="run_rass")
                c["rass_status"] = gr.Markdown("", elem_id="rass_status")
                with gr.Row():
                    c["rass_clean"] = gr.Image(label="RASS on the clean image", interactive=False, format="png",
                                               elem_id="rass_clean")
                    c["rass_degraded"] = gr.Image(label="RASS on the degraded image", interactive=False,
                                                  format="png", elem_id="rass_degraded")
                with gr.Row():
                    c["rass_legend"] = gr.HTML("", label="Classes", elem_id="rass_legend")
                    with gr.Column():
                        c["rass_info"] = gr.Markdown("", elem_id="rass_info")
                        c["rass_files"] = gr.File(label="Downloads: overlays and class-id PNGs", file_count="multiple",
                                                  interactive=False, elem_id="rass_files")
            with gr.Tab("SAM / GleSAM", id="sam_tab"):
                gr.Markdown("Click on the degraded image: points (positive / negative) or two opposite corners "
                            "of a box. SAM and GleSAM get the same prompts.")
                with gr.Row():
                    c["click_mode"] = gr.Radio(list(CLICK_MODES), value=CLICK_MODES[0], label="A click adds",
                                               elem_id="click_mode")
                    c["auto_segment"] = gr.Checkbox(value=True, label="Segment after every click",
                                                    elem_id="auto_segment")
                    c["segment"] = gr.Button("Segment", variant="primary", elem_id="segment")
                    c["clear_prompts"] = gr.Button("Clear prompts", elem_id="clear_prompts")
                c["sam_status"] = gr.Markdown("", elem_id="sam_status")
                c["sam_prompts"] = gr.Markdown("", elem_id="sam_prompts")
                with gr.Row():
                    c["sam_canvas"] = gr.Image(label="Click here (degraded image)", interactive=False, format="png",
                                               elem_id="sam_canvas")
                    c["sam_SAM"] = gr.Image(label="SAM", interactive=False, format="png", elem_id="sam_SAM")
                    c["sam_GleSAM"] = gr.Image(label="GleSAM", interactive=False, format="png", elem_id="sam_GleSAM")
                with gr.Row():
                    c["sam_metrics"] = gr.Markdown("", elem_id="sam_metrics")
                    c["sam_files"] = gr.File(label="Downloads: overlays and mask PNGs", file_count="multiple",
                                             interactive=False, elem_id="sam_files")

        image_out = ["state", "clean_input", "degraded_input", "sam_canvas", "sam_prompts", "status",
                     "rass_clean", "rass_degraded", "rass_legend", "rass_info", "rass_files",
                     "sam_SAM", "sam_GleSAM", "sam_metrics", "sam_files"]
        outs = lambda names: [c[n] for n in names]  # noqa: E731
        c["upload"].change(_bind(c, image_out, "status", app.load), [c["upload"], c["degradation"], c["seed"]],
                           outs(image_out))
        for trigger in (c["degradation"].change, c["seed"].change):
            trigger(_bind(c, image_out, "status", app.degrade), [state, c["degradation"], c["seed"]], outs(image_out))

        rass_out = ["rass_clean", "rass_degraded", "rass_legend", "rass_info", "rass_files", "rass_status"]
        c["run_rass"].click(_bind(c, rass_out, "rass_status", app.run_rass), [state], outs(rass_out))

        sam_out = ["state", "sam_canvas", "sam_prompts", "sam_SAM", "sam_GleSAM", "sam_metrics", "sam_files",
                   "sam_status"]
        click = _bind(c, sam_out, "sam_status", app.click)

        def on_click(state_value, mode, auto, evt: gr.SelectData):
            x, y = evt.index
            return click(state_value, x, y, mode, auto)

        c["sam_canvas"].select(on_click, [state, c["click_mode"], c["auto_segment"]], outs(sam_out))
        c["segment"].click(_bind(c, sam_out, "sam_status", app.segment), [state], outs(sam_out))
        c["clear_prompts"].click(_bind(c, sam_out, "sam_status", app.clear_prompts), [state], outs(sam_out))
    page.components = c  # for tests
    return page
