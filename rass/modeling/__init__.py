from . import tagging  # noqa: F401  (registers the taggers)
from . import pixel_decoder  # noqa: F401  (registers MSDeformAttnPixelDecoder)
from . import transformer_decoder  # noqa: F401  (registers MultiScaleMaskedTransformerDecoder)
from . import meta_arch  # noqa: F401  (registers the "MaskFormer" meta-architecture and "MaskFormerHead")
