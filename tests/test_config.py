import pytest

from rass.config import setup_cfg
from rass.utils.errors import UserKeyError, UserValueError


def test_setup_cfg_has_project_keys_and_is_frozen():
    cfg = setup_cfg(None, ["MODEL.TAGGER.PROMPT", "a photo"])
    assert cfg.is_frozen()
    assert cfg.MODEL.TAGGER.PROMPT == "a photo"
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1


def test_unknown_override_key_is_named():
    with pytest.raises(UserKeyError) as ex:
        setup_cfg(None, ["MODEL.NOT_A_KEY", "1"])
    assert ex.value.message == ("command-line override: unknown config key MODEL.NOT_A_KEY "
                                "(not a detectron2/RASS config key)")


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("MODEL:\n  BOGUS_KEY: 3\n")
    with pytest.raises(UserKeyError) as ex:
        setup_cfg(str(p))
    assert ex.value.message == f"{p}: unknown config key MODEL.BOGUS_KEY (not a detectron2/RASS config key)"


def test_python_tags_are_refused_naming_the_file_and_no_code_runs(tmp_path):
    """A config file (or a _BASE_ of it) with a Python tag is refused by the safe loader: the tag's code
    (here: creating a file) never runs, and the user error names the file, the tag and its line."""
    marker = tmp_path / "code_ran"
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text(f'INPUT:\n  MIN_SIZE_TRAIN: !!python/object/apply:os.system ["touch {marker}"]\n')
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: unsafe.yaml\nSOLVER:\n  MAX_ITER: 5\n")
    for path in (unsafe, child):
        with pytest.raises(UserValueError) as ex:
            setup_cfg(str(path))
        assert ex.value.message == (f"config file {unsafe}: could not determine a constructor for the tag "
                                    "'tag:yaml.org,2002:python/object/apply:os.system' at line 2, column 19")
        assert ex.value.hint == "config files are plain YAML; Python tags (!!python/...) are not allowed"
        assert not marker.exists()
    # the same command without the tag is plain data: the file loads (and the marker is still not there)
    unsafe.write_text("SOLVER:\n  MAX_ITER: 7\n")
    assert setup_cfg(str(child)).SOLVER.MAX_ITER == 5 and not marker.exists()


def test_every_project_key_is_commented():
    """Each key that add_rass_config defines (in every file of the rass.config package) has a comment line right
    above it."""
    import glob
    import os
    import re

    import rass.config as config

    missing = []
    for path in sorted(glob.glob(os.path.join(os.path.dirname(config.__file__), "*.py"))):
        with open(path) as f:
            lines = f.read().split("\n")
        start = next((i for i, line in enumerate(lines) if line.startswith("def setup_cfg")), len(lines))
        for i, line in enumerate(lines[:start]):
            m = re.match(r"\s+(cfg\.[A-Za-z_.]+|[a-z]\.[A-Z_]+)\s*=\s*(.*)", line)
            if m and not m.group(2).startswith("CN()") and not lines[i - 1].strip().startswith("#"):
                missing.append(f"{os.path.basename(path)}: {line.strip()}")
    assert missing == []
    # and the keys are really there
    cfg = setup_cfg(None)
    assert cfg.INPUT.DEGRADATION.PRESET == "rass" and cfg.MODEL.RASS.TIMESTEP == 1
    assert cfg.MODEL.MASK_FORMER.DEC_LAYERS > 0 and cfg.MODEL.TAGGER.RAM.IMAGE_SIZE == 384
