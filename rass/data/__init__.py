from . import datasets  # noqa: F401  (registers the datasets)
from . import dataset_mappers  # noqa: F401
