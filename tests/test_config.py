import pytest

from rass.config import setup_cfg


def test_setup_cfg_has_project_keys_and_is_frozen():
    cfg = setup_cfg(None, ["MODEL.TAGGER.PROMPT", "a photo"])
    assert cfg.is_frozen()
    assert cfg.MODEL.TAGGER.PROMPT == "a photo"
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1


def test_unknown_override_key_is_named():
    with pytest.raises(KeyError, match="MODEL.NOT_A_KEY"):
        setup_cfg(None, ["MODEL.NOT_A_KEY", "1"])


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("MODEL:\n  BOGUS_KEY: 3\n")
    with pytest.raises(KeyError, match=r"bad\.yaml.*BOGUS_KEY"):
        setup_cfg(str(p))


def test_python_tags_are_refused(tmp_path):
    p = tmp_path / "unsafe.yaml"
    p.write_text('INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:eval ["[1, 2]"]\n')
    with pytest.raises(Exception):
        setup_cfg(str(p))


def test_every_project_key_is_commented():
    """Each key that add_rass_config defines has a comment line right above it."""
    import inspect
    import re

    import rass.config as config

    lines = inspect.getsource(config).split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("def setup_cfg"))
    missing = []
    for i, line in enumerate(lines[:start]):
        m = re.match(r"\s+(cfg\.[A-Za-z_.]+|[a-z]\.[A-Z_]+)\s*=\s*(.*)", line)
        if m and not m.group(2).startswith("CN()") and not lines[i - 1].strip().startswith("#"):
            missing.append(line.strip())
    assert missing == []
    # and the keys are really there
    cfg = setup_cfg(None)
    assert cfg.INPUT.DEGRADATION.PRESET == "rass" and cfg.MODEL.RASS.TIMESTEP == 1
    assert cfg.MODEL.MASK_FORMER.DEC_LAYERS > 0 and cfg.MODEL.TAGGER.RAM.IMAGE_SIZE == 384
