"""The browser demo's gradio page: components, layout and the wiring of `DemoApp`'s actions.

Every action returns ``{component name: value}``; `_bind` turns that into gradio outputs (components
it does not name are left as they are) and turns any exception into a message in the action's
status box, so a bad upload or a missing model never shows a traceback and the server keeps serving.
Values that gradio itself cannot take (sent to the page's API: a seed that is not a number, a
degradation that is not offered, a malformed file or click) never reach an action: `DemoBlocks`
turns them into an error message on the page and one WARNING line in the server log instead of
gradio's traceback. Element ids (``elem_id``) are the component names, which the browser test relies on.
"""
import logging
import math
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home; the machine may be offline

import gradio as gr  # noqa: E402
from gradio.exceptions import ComponentProcessingError  # noqa: E402

from rass.app.inputs import DEGRADATIONS  # noqa: E402
from rass.app.models import AppError, user_message  # noqa: E402
from rass.app.sam_tab import CLICK_MODES  # noqa: E402
from rass.app.session import DemoApp, error_markdown  # noqa: E402

__all__ = ["build_page", "THEME"]

logger = logging.getLogger(__name__)

# System fonts only: the default theme would fetch Google fonts.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "SFMono-Regular", "monospace"])
CSS = """
.rass-legend td, .rass-legend th { padding: 2px 10px; }
#status, #rass_status, #sam_status, #mgd_status { min-height: 1.5em; }
"""
INTRO = """# RASS demo: segmentation of low-quality photos
Upload a photo (or pick an example), choose a degradation, then compare **RASS** semantic segmentation of the
clean and the degraded image, or click prompts for **SAM / GleSAM** on the degraded image (and, when the page has
its tab, segment it prompt-free with **MGD-SAM2** next to SAM2 given a box)."""


def _failure(exc: BaseException) -> str:
    message = user_message(exc)
    if message is None:
        logger.exception("demo action failed")
        return error_markdown(f"internal error ({type(exc).__name__}: {exc}); the server log has the traceback")
    return error_markdown(message)


# The longest invalid-input message (a request may carry a huge value).
MAX_MESSAGE = 300


def invalid_input_message(fn_name: str, exc: BaseException, components: Sequence = (), values: Sequence = (),
                          event: bool = False) -> str:
    """One line saying why gradio could not take a request's values (whitespace collapsed, shortened).

    Args:
        fn_name: the action's name.
        exc: what gradio raised.
        components: the action's input components.
        values: the values the request sent for them.
        event: the event data (e.g. a click's position) was the problem, not an input value.
    """
    reason = exc.message if isinstance(exc, gr.Error) else str(exc)
    where = re.search(r"input component at index (\d+)", reason) if isinstance(exc, ComponentProcessingError) else None
    if where and int(where.group(1)) < min(len(components), len(values)):
        i = int(where.group(1))
        name = getattr(components[i], "label", None) or getattr(components[i], "elem_id", None) or f"input {i}"
        expected = re.search(r"Expected (.+?), but", reason)
        cause = exc.__cause__ or exc
        why = f"expected {expected.group(1)}" if expected else f"{type(cause).__name__}: {cause}"
        reason = f"{name}: {values[i]!r:.80} is not a valid value ({why})"
    if event:
        reason = f"the event data is missing or malformed ({type(exc).__name__}: {reason})"
    reason = " ".join(reason.split()) or type(exc).__name__
    if len(reason) > MAX_MESSAGE:
        reason = reason[:MAX_MESSAGE - 3] + "..."
    return f"invalid request to {fn_name}: {reason}"


class DemoBlocks(gr.Blocks):
    """`gr.Blocks` whose requests with values gradio cannot take (its input processing and event data
    fail before an action runs) become a `gr.Error` message on the page and one WARNING line in the
    log, not a traceback. The actions themselves never raise (see `_bind`)."""

    def _invalid(self, block_fn, exc: BaseException, values: Sequence = (), event: bool = False) -> gr.Error:
        block_fn = self.fns[block_fn] if isinstance(block_fn, int) else block_fn
        message = invalid_input_message(getattr(block_fn, "name", None) or "the page", exc,
                                        getattr(block_fn, "inputs", ()), values, event=event)
        logger.warning(message)
        return gr.Error(message, print_exception=False)

    async def preprocess_data(self, block_fn, inputs, state, explicit_call: bool = False):  # noqa: D102
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except Exception as e:  # noqa: BLE001 - the request's values; reported on the page
            raise self._invalid(block_fn, e, inputs) from None

    async def call_function(self, block_fn, processed_input, *args, **kwargs):  # noqa: D102
        try:
            return await super().call_function(block_fn, processed_input, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the actions catch their own errors: this is the event data
            raise self._invalid(block_fn, e, event=True) from None


def click_position(index: object) -> Tuple[float, float]:
    """The (x, y) pixel of a click on the SAM image (gradio's `SelectData.index`), checked."""
    try:
        x, y = (float(v) for v in index)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise AppError(f"a click needs the pixel [x, y], got {index!r:.80}") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise AppError(f"a click needs a finite pixel [x, y], got [{x}, {y}]")
    return x, y


def _bind(components: Dict[str, gr.components.Component], outputs: Sequence[str], status: str,
          action: Callable[..., Dict], before: Optional[Callable[[], object]] = None) -> Callable:
    """A gradio handler: `action(*inputs)` -> {name: value} in the order of `outputs`; an exception
    becomes an error message in `status` (which must be among `outputs`).

    Args:
        components: the page's components.
        outputs: the names of the handler's outputs.
        status: the output that shows errors.
        action: the action.
        before: called first on every request (e.g. pruning gradio's file cache); its errors are logged
            in one line.
    """
    def handler(*args):
        if before is not None:
            try:
                before()
            except Exception as e:  # noqa: BLE001 - housekeeping must not stop the action
                logger.warning(f"before {getattr(action, '__name__', 'action')}: {type(e).__name__}: {e}")
        try:
            values = action(*args)
        except Exception as e:  # noqa: BLE001 - shown on the page
            values = {status: _failure(e)}
        return [values[name] if name in values else gr.skip() for name in outputs]
    handler.__name__ = getattr(action, "__name__", "action")
    return handler


def _stages(progress: "gr.Progress") -> Callable[[float, str], None]:
    """progress(fraction, stage name) on gradio's progress bar (named stages instead of a seconds counter)."""
    def tell(fraction: float, stage: str) -> None:
        progress(fraction, desc=stage)
    return tell


def build_page(app: DemoApp, examples: List[str], before: Optional[Callable[[], object]] = None) -> gr.Blocks:
    """The demo page.

    Args:
        app: the actions and back ends.
        examples: paths of the bundled example images.
        before: called at the start of every request (the demo prunes gradio's file cache with it).
    """
    c: Dict[str, gr.components.Component] = {}
    bind = lambda outputs, status, action: _bind(c, outputs, status, action, before)  # noqa: E731
    with DemoBlocks(title="RASS demo", analytics_enabled=False) as page:
        state = gr.State(None)
        c["state"] = state
        gr.Markdown(INTRO)
        c["models"] = gr.Markdown(app.models_markdown(), elem_id="models")
        with gr.Accordion("Technical details: configs and weight files", open=False, elem_id="models_accordion"):
            c["models_details"] = gr.Markdown(app.models_details(), elem_id="models_details")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                c["upload"] = gr.File(label="Your image", file_types=["image"], elem_id="upload")
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[c["upload"]], label="Examples")
                c["degradation"] = gr.Radio(list(DEGRADATIONS), value="lqseg_3", label="Degradation",
                                            info="LQSeg levels 1-3 (GleSAM's test sets, slight to severe) or RASS's training mix "
                                                 "(the same as lqseg_1)",
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
                added = app.extra_panels  # RobustSAM, Stable-SAM, HQ-SAM, ... with their own weights
                gr.Markdown("Click on the degraded image: points (positive / negative) or two opposite corners "
                            "of a box. SAM and GleSAM (when the model has it) get the same prompts"
                            + (f", and so {'does' if len(added) == 1 else 'do'} {' and '.join(added)} "
                               f"({'its' if len(added) == 1 else 'their'} own weights)." if added else ".")
                            + " **Perturb my box** replaces your box by one noisy draw (HQ-SAM's box noise; your box "
                              "is kept for the next draw) and shows every model's mask for that same noisy box.")
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
                    c["sam_GleSAM"] = gr.Image(label="GleSAM", interactive=False, format="png", elem_id="sam_GleSAM",
                                               visible=app.has_glesam)  # a plain SAM model has no GleSAM mask
                    for name in added:  # --robustsam-config-file, --extra-sam-config: more masks, same clicks
                        c[f"sam_{name}"] = gr.Image(label=name, interactive=False, format="png",
                                                    elem_id=f"sam_{name}")
                with gr.Row():
                    c["box_noise"] = gr.Slider(0.0, 0.5, value=0.2, step=0.01, label="Box noise scale",
                                               info="0 = your box; HQ-SAM's noise moves the centre by up to "
                                                    "scale x half the size, each side length by up to scale x it",
                                               elem_id="box_noise")
                    c["box_noise_seed"] = gr.Number(value=0, precision=0, minimum=0, label="Noise seed",
                                                    elem_id="box_noise_seed")
                    c["perturb_box"] = gr.Button("Perturb my box", elem_id="perturb_box")
                c["sam_perturb"] = gr.Markdown("", elem_id="sam_perturb")
                with gr.Row():
                    c["sam_metrics"] = gr.Markdown("", elem_id="sam_metrics")
                    c["sam_files"] = gr.File(label="Downloads: overlays and mask PNGs", file_count="multiple",
                                             interactive=False, elem_id="sam_files")
            if app.mgd is not None:
                with gr.Tab("MGD-SAM2", id="mgd_tab"):
                    gr.Markdown("**MGD-SAM2** segments the main object of the degraded image without any prompt. "
                                "To compare with **SAM2**, click two opposite corners of a box on the image: SAM2 "
                                "segments what the box holds. The masks are downloadable at the image's own size.")
                    with gr.Row():
                        c["mgd_segment"] = gr.Button("Segment with MGD-SAM2", variant="primary", elem_id="mgd_segment")
                        c["mgd_clear"] = gr.Button("Clear the box", elem_id="mgd_clear")
                    c["mgd_status"] = gr.Markdown("", elem_id="mgd_status")
                    c["mgd_box"] = gr.Markdown("", elem_id="mgd_box")
                    with gr.Row():
                        c["mgd_canvas"] = gr.Image(label="Click two box corners here for SAM2 (degraded image)",
                                                   interactive=False, format="png", elem_id="mgd_canvas")
                        c["mgd_MGD"] = gr.Image(label="MGD-SAM2 (no prompt)", interactive=False, format="png",
                                                elem_id="mgd_MGD")
                        c["mgd_SAM2"] = gr.Image(label="SAM2 (your box)", interactive=False, format="png",
                                                 elem_id="mgd_SAM2")
                    with gr.Row():
                        c["mgd_metrics"] = gr.Markdown("", elem_id="mgd_metrics")
                        c["mgd_files"] = gr.File(label="Downloads: masks (image size) and overlays",
                                                 file_count="multiple", interactive=False, elem_id="mgd_files")

        image_out = ["state", "clean_input", "degraded_input", "sam_canvas", "sam_prompts", "status",
                     "rass_clean", "rass_degraded", "rass_legend", "rass_info", "rass_files",
                     "sam_SAM", "sam_GleSAM", "sam_metrics", "sam_files", "sam_perturb"]
        sam_masks = [f"sam_{name}" for name in added]
        image_out += sam_masks
        if app.mgd is not None:
            image_out += ["mgd_canvas", "mgd_box", "mgd_MGD", "mgd_SAM2", "mgd_metrics", "mgd_files"]
        outs = lambda names: [c[n] for n in names]  # noqa: E731
        c["upload"].change(bind(image_out, "status", app.load), [c["upload"], c["degradation"], c["seed"]],
                           outs(image_out))
        for trigger in (c["degradation"].change, c["seed"].change):
            trigger(bind(image_out, "status", app.degrade), [state, c["degradation"], c["seed"]], outs(image_out))

        rass_out = ["rass_clean", "rass_degraded", "rass_legend", "rass_info", "rass_files", "rass_status"]
        run_rass = bind(rass_out, "rass_status", app.run_rass)

        def on_run_rass(state_value, progress=gr.Progress()):  # noqa: B008 - gradio's way to get a progress bar
            return run_rass(state_value, _stages(progress))

        c["run_rass"].click(on_run_rass, [state], outs(rass_out))

        sam_out = ["state", "sam_canvas", "sam_prompts", "sam_SAM", "sam_GleSAM", "sam_metrics", "sam_files",
                   "sam_status", "sam_perturb"] + sam_masks

        def click_at(state_value, index, mode, auto, progress=None):
            x, y = click_position(index)
            return app.click(state_value, x, y, mode, auto, progress)

        click = bind(sam_out, "sam_status", click_at)
        segment = bind(sam_out, "sam_status", app.segment)

        def on_click(state_value, mode, auto, evt: gr.SelectData, progress=gr.Progress()):  # noqa: B008
            return click(state_value, evt.index, mode, auto, _stages(progress))

        def on_segment(state_value, progress=gr.Progress()):  # noqa: B008
            return segment(state_value, _stages(progress))

        c["sam_canvas"].select(on_click, [state, c["click_mode"], c["auto_segment"]], outs(sam_out))
        c["segment"].click(on_segment, [state], outs(sam_out))
        c["clear_prompts"].click(bind(sam_out, "sam_status", app.clear_prompts), [state], outs(sam_out))
        perturb = bind(sam_out, "sam_status", app.perturb)

        def on_perturb(state_value, scale, seed, progress=gr.Progress()):  # noqa: B008
            return perturb(state_value, scale, seed, _stages(progress))

        c["perturb_box"].click(on_perturb, [state, c["box_noise"], c["box_noise_seed"]], outs(sam_out))

        if app.mgd is not None:
            mgd_out = ["state", "mgd_canvas", "mgd_box", "mgd_MGD", "mgd_SAM2", "mgd_metrics", "mgd_files",
                       "mgd_status"]

            def mgd_click_at(state_value, index, progress=None):
                x, y = click_position(index)
                return app.mgd_click(state_value, x, y, progress)

            mgd_click = bind(mgd_out, "mgd_status", mgd_click_at)
            mgd_segment = bind(mgd_out, "mgd_status", app.mgd_segment)

            def on_mgd_click(state_value, evt: gr.SelectData, progress=gr.Progress()):  # noqa: B008
                return mgd_click(state_value, evt.index, _stages(progress))

            def on_mgd_segment(state_value, progress=gr.Progress()):  # noqa: B008
                return mgd_segment(state_value, _stages(progress))

            c["mgd_canvas"].select(on_mgd_click, [state], outs(mgd_out))
            c["mgd_segment"].click(on_mgd_segment, [state], outs(mgd_out))
            c["mgd_clear"].click(bind(mgd_out, "mgd_status", app.mgd_clear), [state], outs(mgd_out))
    page.components = c  # for tests
    return page
