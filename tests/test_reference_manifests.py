import json
import os

import pytest

from tests.conftest import REPO, load_manifest

SHARED = os.path.join(REPO, "..", "shared", "reference", "manifests")
NAMES = ["ram_swin_large_manifest.json", "rass_full_manifest.json", "rass_full_manifest.transformers5.json",
         "rass_trainable_manifest.json", "rass_manifest_extras.json", "rass_stats.json",
         "sam_vit_manifest.json", "glesam_unet_lora_manifest.json"]


@pytest.mark.parametrize("name", NAMES)
def test_committed_manifest_copy_matches_reference(name):
    ours = load_manifest(name)
    assert len(ours) > 0
    ref = os.path.join(SHARED, name)
    if not os.path.isfile(ref):
        pytest.skip(f"reference folder not present: {ref}")
    assert ours == json.load(open(ref))
