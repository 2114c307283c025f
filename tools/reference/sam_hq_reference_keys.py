"""Write the HQ-SAM reference key lists (`tests/reference/sam_hq_keys/sam_hq_vit_{b,l,h}.json`).

Each list is the state dict (name -> shape) of the published HQ-SAM (`segment_anything.build_sam._build_sam`
of SysCV/sam-hq, `Sam` with `MaskDecoderHQ`) built with the ViT-B/L/H settings of its `build_sam_vit_{b,l,h}`
on the meta device (names and shapes only, no values): the key set of the released `sam_hq_vit_{b,l,h}.pth`
(SAM's checkpoint with the HQ modules merged in as `mask_decoder.<name>`, `train/train.py`). The tests compare
the project's HQ-SAM (after `rass.checkpoint.sam_hq_keys.hf_to_original_hq_keys`) with these lists, name by
name and shape by shape.

Usage (needs a checkout of SysCV/sam-hq, e.g. commit fb181f8; its modules are only imported, nothing of them is
written out; the package `__init__` is bypassed so that timm (Light HQ-SAM's TinyViT) is not needed):
    python tools/reference/sam_hq_reference_keys.py --sam-hq-root /path/to/sam-hq --out tests/reference/sam_hq_keys
    # ... and the output parity of the project's HQ-SAM with the published modules (tiny, same weights)
    python tools/reference/sam_hq_reference_keys.py --sam-hq-root /path/to/sam-hq --check-parity
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import types
from functools import partial
from typing import Dict

import torch

# segment_anything/build_sam.py of SysCV/sam-hq: embed dim, depth, heads, global-attention blocks.
VARIANTS = {"vit_b": (768, 12, 12, (2, 5, 8, 11)), "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
            "vit_h": (1280, 32, 16, (7, 15, 23, 31))}


def _modules(root: str) -> types.SimpleNamespace:
    """The sam-hq modules needed to build the model, imported without the packages' `__init__` files."""
    for package in ("segment_anything", "segment_anything.modeling"):
        if package not in sys.modules:
            stub = types.ModuleType(package)
            stub.__path__ = [os.path.join(root, *package.split("."))]
            sys.modules[package] = stub
    get = lambda name: importlib.import_module(f"segment_anything.modeling.{name}")  # noqa: E731
    return types.SimpleNamespace(Sam=get("sam").Sam, ImageEncoderViT=get("image_encoder").ImageEncoderViT,
                                 PromptEncoder=get("prompt_encoder").PromptEncoder,
                                 MaskDecoderHQ=get("mask_decoder_hq").MaskDecoderHQ,
                                 TwoWayTransformer=get("transformer").TwoWayTransformer)


def reference_keys(root: str, variant: str) -> Dict[str, list]:
    """name -> shape of the published HQ-SAM of `variant`, as `_build_sam` of sam-hq builds it."""
    m = _modules(root)
    dim, depth, heads, glob = VARIANTS[variant]
    with torch.device("meta"):
        sam = m.Sam(
            image_encoder=m.ImageEncoderViT(depth=depth, embed_dim=dim, img_size=1024, mlp_ratio=4,
                                            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=heads,
                                            patch_size=16, qkv_bias=True, use_rel_pos=True,
                                            global_attn_indexes=list(glob), window_size=14, out_chans=256),
            prompt_encoder=m.PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                           mask_in_chans=16),
            mask_decoder=m.MaskDecoderHQ(num_multimask_outputs=3,
                                         transformer=m.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                                                         num_heads=8),
                                         transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256, vit_dim=dim),
            pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    return {name: list(value.shape) for name, value in sam.state_dict().items()}


def check_parity(root: str) -> Dict[str, float]:
    """Largest |difference| between the project's tiny HQ-SAM and the published modules built alike with the same
    weights (image embedding, early features, and the masks / IoU of each output mode for one box); the project's
    decoder must agree to float precision (transformers' own SamHQ decoder differs by ~1 logit, see
    `rass.modeling.sam_hq.decoder`)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from rass.checkpoint.sam_hq_keys import hf_to_original_hq_keys
    from rass.modeling.sam_hq import build_sam_hq, sam_hq_image_embeddings, sam_hq_predict

    m = _modules(root)
    ours = build_sam_hq("tiny", generator=torch.Generator().manual_seed(0))
    ref = m.Sam(image_encoder=m.ImageEncoderViT(depth=2, embed_dim=32, img_size=256, mlp_ratio=4,
                                                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2,
                                                patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1],
                                                window_size=4, out_chans=256),
                prompt_encoder=m.PromptEncoder(embed_dim=256, image_embedding_size=(16, 16),
                                               input_image_size=(256, 256), mask_in_chans=16),
                mask_decoder=m.MaskDecoderHQ(num_multimask_outputs=3, transformer=m.TwoWayTransformer(
                    depth=2, embedding_dim=256, mlp_dim=256, num_heads=8), transformer_dim=256, iou_head_depth=3,
                    iou_head_hidden_dim=64, vit_dim=32),
                pixel_mean=[0, 0, 0], pixel_std=[1, 1, 1]).eval()
    ref.load_state_dict(hf_to_original_hq_keys(ours.state_dict()), strict=True)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[20.0, 30.0, 200.0, 180.0]])
    out: Dict[str, float] = {}
    with torch.no_grad():
        emb, interm = ref.image_encoder(x)
        sparse, dense = ref.prompt_encoder(points=None, boxes=box, masks=None)
        z, early = sam_hq_image_embeddings(ours, x)
        out["embedding"], out["early"] = float((emb - z).abs().max()), float((interm[0] - early).abs().max())
        for multimask in (False, True):
            for hq_only in (False, True):
                masks, iou = ref.mask_decoder(image_embeddings=emb, image_pe=ref.prompt_encoder.get_dense_pe(),
                                              sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                              multimask_output=multimask, hq_token_only=hq_only,
                                              interm_embeddings=interm)
                got, got_iou = sam_hq_predict(ours, z, early, boxes=box[None], multimask_output=multimask,
                                              hq_token_only=hq_only)
                key = f"multimask={multimask},hq_token_only={hq_only}"
                out[f"masks {key}"] = float((masks[0] - got[0, 0]).abs().max())
                out[f"iou {key}"] = float((iou[0] - got_iou[0, 0]).abs().max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sam-hq-root", required=True, help="checkout of SysCV/sam-hq")
    parser.add_argument("--commit", default="fb181f8eff6d0c01b47921ced472e8cdaa69a71d", help="its commit (recorded)")
    parser.add_argument("--out", default="tests/reference/sam_hq_keys", help="output folder")
    parser.add_argument("--check-parity", action="store_true", help="also compare the project's tiny HQ-SAM with the "
                        "published modules on one box (prints the largest differences)")
    args = parser.parse_args()
    if args.check_parity:
        for name, diff in check_parity(args.sam_hq_root).items():
            print(f"parity {name}: max |diff| {diff:.2e}")
    os.makedirs(args.out, exist_ok=True)
    for variant in VARIANTS:
        keys = reference_keys(args.sam_hq_root, variant)
        values = sum(int(torch.Size(s).numel()) for s in keys.values())
        out = os.path.join(args.out, f"sam_hq_{variant}.json")
        source = f"SysCV/sam-hq@{args.commit} segment_anything/build_sam.py _build_sam({variant}) state_dict()"
        head = {"source": source,
                "num_keys": len(keys), "num_values": values}
        with open(out, "w") as f:  # one key per line
            f.write("{\n" + "".join(f"{json.dumps(k)}: {json.dumps(v)},\n" for k, v in head.items()) + '"keys": {\n'
                    + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in keys.items()) + "\n}\n}\n")
        print(f"{out}: {len(keys)} keys, {values} values")


if __name__ == "__main__":
    main()
