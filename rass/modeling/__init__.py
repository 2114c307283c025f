from . import tagging  # noqa: F401  (registers the taggers)
