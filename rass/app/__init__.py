"""The browser demo (`demo/app.py`): degrade an image, segment it with RASS and with SAM / GleSAM, compare.

`rass.app.backends` holds the work (no gradio needed); `rass.app.page` builds the gradio page.
"""
