"""The browser demo (`demo/app.py`): degrade an image, segment it with RASS and with SAM / GleSAM, compare.

The work needs no gradio: `models` (which model each tab runs), `inputs` (uploads, degradations,
downloads), `rass_tab`, `sam_tab`, `session` (the page's actions) and `workdir` (the demo's private
folder, gradio's file cache in it); `page` builds the gradio page.
"""
