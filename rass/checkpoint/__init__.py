from .checkpointer import RASSCheckpointer

__all__ = ["RASSCheckpointer"]
