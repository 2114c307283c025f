from .build import build_lr_scheduler, build_optimizer, build_param_groups

__all__ = ["build_optimizer", "build_lr_scheduler", "build_param_groups"]
