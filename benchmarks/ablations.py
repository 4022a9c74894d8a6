"""Ablations of DASR retrieval on a manifest with ground truth (docs/benchmarks.md, "Retrieval quality").

    python benchmarks/ablations.py MANIFEST --cache DIR [--only whitening,layer,nms,method,side,mode,tau]
                                    [--subset N] [--json OUT]

Every row is one `run_eval` (same protocol and metrics as `dasr-annotator eval`). Two shortcuts
keep the CPU bill down, each checked against a direct extraction on a few images (printed):
- descriptor layer: regions do not depend on it (seeds and maps come from the activation
  layer), so the default extraction's boxes are re-pooled on each candidate layer;
- NMS beta: one extraction without suppression, then NMS at each beta on its boxes and scores.
NMS on the boxes of an unsuppressed extraction equals NMS inside the extractor only where every
seed gets its box before NMS (modes moments / exact / reference); for mode fast (which refines
only the seeds NMS keeps) the NMS ablation runs in mode moments, and says so.
The long-side and tau ablations run on `--subset` frames per instance, fast vs exact on
`--exact-subset` (exact costs ~25 s per image on this CPU).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dasr_annotator.engine.dasr.backbones import WeightsMissing
from dasr_annotator.engine.dasr.descriptors import l2n, pool_boxes
from dasr_annotator.engine.dasr.regions import nms
from dasr_annotator.engine.evaluation import runner as er
from dasr_annotator.engine.evaluation.cache import ImageRegionsArrays, extract_manifest, extraction_cache
from dasr_annotator.engine.evaluation.manifest import Manifest, load_manifest
from dasr_annotator.engine.store.imageio import load_image

ABLATIONS = ("whitening", "layer", "nms", "method", "side", "mode", "tau")
# Candidate descriptor layers (stride >= 16: coarser than that, a region is a handful of cells).
LAYERS = {
    "efficientnet-lite0": ("blocks.7", "blocks.10", "blocks.12", "blocks.14", "blocks.15", "head"),
    # the same positions in Lite2's stages (last of stage 4 / 5, mid / last of 6, last block, head)
    "efficientnet-lite2": ("blocks.10", "blocks.14", "blocks.17", "blocks.19", "blocks.20", "head"),
    "resnet50": ("layer3", "layer4.0", "layer4.1", "layer4"),
    "vgg16": ("conv5_1", "conv5_2", "conv5_3"),
}
NMS_BETAS = (0.1, 0.2, 0.3, 0.4, 0.5, None)
SIDES = (384, 512, 768)
TAUS = (0.05, 0.1, 0.2)
CHECK_IMAGES = 3  # images re-extracted directly to check each shortcut


def repool(manifest: Manifest, images: list[ImageRegionsArrays], extractor) -> list[ImageRegionsArrays]:
    """The same regions, described by `extractor`'s descriptor layer."""
    bb = extractor.backbone
    out = []
    for file, im in zip(manifest.files, images):
        prep = extractor.prepare(load_image(manifest.root / file, max_side=extractor.max_side))
        with torch.inference_mode():
            feature = bb.forward(prep.pixels, layers=(bb.descriptor_layer,)).features[bb.descriptor_layer][0]
            x, y, w, h = im.boxes.T
            xyxy = torch.tensor(np.stack([x * prep.scale_x, y * prep.scale_y, (x + w) * prep.scale_x,
                                          (y + h) * prep.scale_y], 1), dtype=torch.float32)
            descs = l2n(pool_boxes(feature.float(), xyxy, bb.descriptor_stride)).cpu().numpy()
        out.append(replace(im, descriptors=descs.astype(np.float32)))
    return out


def suppressed(images: list[ImageRegionsArrays], beta: float | None) -> list[ImageRegionsArrays]:
    """NMS at `beta` applied to regions extracted without suppression (None: keep all)."""
    if beta is None:
        return images
    out = []
    for im in images:
        x, y, w, h = torch.tensor(im.boxes).T
        keep = nms(torch.stack([x, y, x + w, y + h], 1), torch.tensor(im.scores), beta).numpy()
        out.append(replace(im, boxes=im.boxes[keep], descriptors=im.descriptors[keep], scores=im.scores[keep]))
    return out


def row(label: str, report: dict) -> dict:
    m = report["methods"][0]
    loc = m["localization"]
    return {"ablation": label, "map@50": m["map@50"], "map@100": m["map@100"], "map@all": m["map@all"],
            "map@50_located": m["map@50_located"], "recall@100_located": m["recall@100_located"],
            "loc_top": loc["mean_top"], "loc_best": loc["mean_best"], "regions_per_image": m["regions_per_image"],
            "seconds_per_image": m["extract_seconds_per_image"], "images": report["images"],
            "queries": len(report["queries"]), "whitening": report["whitening"], "extractor": report["extractor"]}


def _cell(value, width: int, digits: int = 3) -> str:
    return f"{'n/a':>{width}}" if value is None or value != value else f"{value:{width}.{digits}f}"


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n## {title} (whitening: {rows[0]['whitening'] if rows else '-'})")
    print(f"{'setting':<46} {'mAP@50':>7} {'mAP@all':>7} {'mAP@50-loc':>10} {'R@100-loc':>9} {'locR top':>8} "
          f"{'locR best':>9} {'reg/img':>7} {'s/img':>6} {'images':>6}")
    for r in rows:
        print(f"{r['ablation']:<46} {_cell(r['map@50'], 7)} {_cell(r['map@all'], 7)} "
              f"{_cell(r['map@50_located'], 10)} {_cell(r['recall@100_located'], 9)} {_cell(r['loc_top'], 8)} "
              f"{_cell(r['loc_best'], 9)} {_cell(r['regions_per_image'], 7, 1)} {_cell(r['seconds_per_image'], 6, 2)} "
              f"{r['images']:6d}")
    sys.stdout.flush()


class Ablations:
    def __init__(self, manifest_path: str, settings: er.EvalSettings, subset: int, exact_subset: int):
        self.path, self.base, self.subset, self.exact_subset = manifest_path, settings, subset, exact_subset
        self.manifest = load_manifest(manifest_path, settings.instances, settings.limit_images)

    def extract(self, settings: er.EvalSettings):
        manifest = load_manifest(self.path, settings.instances, settings.limit_images)
        extractor = settings.extractor()
        started = time.perf_counter()
        images = extract_manifest(manifest, extractor, extraction_cache(extractor, settings.cache_dir),
                                     lambda d, t: print(f"\r  extracting {d}/{t}", end="", file=sys.stderr))
        print(f"\r  {len(images)} images ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        return manifest, extractor, images

    def evaluate(self, label, settings, extractor=None, images=None) -> dict:
        report = er.run_eval(self.path, settings, extractor=extractor, images=images, label=label)
        return row(label, report)

    def whitening(self) -> list[dict]:
        _, extractor, images = self.extract(self.base)
        rows = [self.evaluate(f"whitening {w}", replace(self.base, whitening=w), extractor, images)
                for w in ("none", "collection", "other")]
        rows.append(self.evaluate("whitening collection, 64 dims",
                                  replace(self.base, whitening="collection", whitening_dim=64), extractor, images))
        return rows

    def layer(self) -> list[dict]:
        manifest, base_extractor, images = self.extract(self.base)
        check = repool(replace(manifest, files=manifest.files[:CHECK_IMAGES]), images[:CHECK_IMAGES], base_extractor)
        diff = max(float(np.abs(a.descriptors - b.descriptors).max(initial=0.0)) for a, b in zip(check, images))
        print(f"  check: re-pooled vs extracted descriptors, max abs difference {diff:.2e}", file=sys.stderr)
        rows = []
        for layer in LAYERS[self.base.backbone]:
            settings = replace(self.base, descriptor_layer=layer)
            extractor = settings.extractor()
            rows.append(self.evaluate(f"descriptor layer {layer} ({extractor.backbone.descriptor_dim}-d, "
                                      f"stride {extractor.backbone.descriptor_stride})",
                                      settings, extractor, repool(manifest, images, extractor)))
        return rows

    def nms(self) -> list[dict]:
        if self.base.method != "dasr*":
            return []
        base = replace(self.base, mode="moments") if self.base.mode == "fast" else self.base
        manifest, extractor, images = self.extract(replace(base, nms_beta=1.0))
        direct = replace(base, nms_beta=0.3).extractor()
        same = 0
        for file, im in zip(manifest.files[:CHECK_IMAGES], suppressed(images[:CHECK_IMAGES], 0.3)):
            got = direct.extract(load_image(manifest.root / file, max_side=direct.max_side))
            boxes = np.array([r.box.as_list() for r in got.regions]).reshape(-1, 4)
            same += boxes.shape == im.boxes.shape and np.allclose(boxes, im.boxes, atol=1e-3)
        print(f"  check: post-hoc NMS 0.3 equals direct extraction on {same}/{CHECK_IMAGES} images", file=sys.stderr)
        return [self.evaluate(f"NMS beta {beta if beta is not None else 'none'} (mode {base.mode})",
                              replace(base, nms_beta=beta if beta is not None else 1.0),
                              extractor, suppressed(images, beta)) for beta in NMS_BETAS]

    def method(self) -> list[dict]:
        rows = []
        for method in ("dasr", "dasr*"):
            settings = replace(self.base, method=method)
            _, extractor, images = self.extract(settings)
            rows.append(self.evaluate(f"method {method}", settings, extractor, images))
        return rows

    def side(self) -> list[dict]:
        rows = []
        for side in SIDES:
            settings = replace(self.base, max_side=side, limit_images=self.subset)
            _, extractor, images = self.extract(settings)
            rows.append(self.evaluate(f"long side {side} ({self._frames(self.subset)})", settings, extractor, images))
        return rows

    def mode(self) -> list[dict]:
        rows = []
        for mode in ("moments", "fast", "exact"):
            settings = replace(self.base, mode=mode, limit_images=self.exact_subset)
            _, extractor, images = self.extract(settings)
            rows.append(self.evaluate(f"mode {mode} ({self._frames(self.exact_subset)})", settings, extractor, images))
        return rows

    def tau(self) -> list[dict]:
        rows = []
        for tau in TAUS:
            settings = replace(self.base, tau=tau, limit_images=self.subset)
            _, extractor, images = self.extract(settings)
            rows.append(self.evaluate(f"tau {tau} (mode {settings.mode}, {self._frames(self.subset)})",
                                      settings, extractor, images))
        return rows

    @staticmethod
    def _frames(n: int | None) -> str:
        return f"{n} frames/instance" if n else "all frames"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest")
    parser.add_argument("--cache", required=True, help="extraction cache folder (shared with dasr-annotator eval)")
    parser.add_argument("--only", default=",".join(ABLATIONS), help=f"comma-separated subset of {','.join(ABLATIONS)}")
    parser.add_argument("--backbone", default="efficientnet-lite0", choices=sorted(LAYERS))
    parser.add_argument("--whitening", default="none", choices=er.WHITENING_CHOICES,
                        help="whitening for every ablation but the whitening one (default none: with 'auto' "
                             "a setting that adds regions or shrinks descriptors switches the collection's "
                             "whitening on, and that change would swamp the one being measured)")
    parser.add_argument("--mode", default="fast", help="extraction mode of every ablation but mode/nms")
    parser.add_argument("--subset", type=int, default=10, help="frames per instance for the side and tau ablations")
    parser.add_argument("--exact-subset", type=int, default=3, help="frames per instance for fast vs exact")
    parser.add_argument("--limit-images", type=int, help="frames per instance for all ablations (quick runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    parser.add_argument("--json", help="write all rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = er.EvalSettings(backbone=args.backbone, mode=args.mode, whitening=args.whitening, cache_dir=args.cache,
                           limit_images=args.limit_images, device="cpu")
    ablations = Ablations(args.manifest, base, args.subset, args.exact_subset)
    results = {}
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name not in ABLATIONS:
            parser.error(f"unknown ablation {name!r}; choose from {', '.join(ABLATIONS)}")
        try:
            results[name] = getattr(ablations, name)()
        except WeightsMissing as exc:
            print(f"\n## {name}: skipped ({exc})")
            continue
        print_rows(name, results[name])
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
