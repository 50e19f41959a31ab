"""Export a pretrained backbone as a plain state dict: `minc-export CHECKPOINT OUT.pt`.

From a checkout: `python -m scaled.export CHECKPOINT OUT.pt`. OUT.pt holds only the online
backbone's tensors (no projector, predictor, target network or probe), float32, keyed as in
torchvision's ResNet without `fc`. OUT.json beside it says how to build the module:

- resnet50 (3-channel input): torchvision's own network; load with
      m = torchvision.models.resnet50(); m.fc = torch.nn.Identity()
      m.load_state_dict(torch.load("OUT.pt"))            # strict=True
  (or keep torchvision's fc and pass strict=False: the only missing keys are fc.weight, fc.bias).
- resnet18 likewise with `torchvision.models.resnet18()`.
- resnet50x2 and small_resnet (and any grey-input net) have no torchvision twin: OUT.json's
  `build` line builds the matching `scaled.model.ResNetBackbone`, which loads OUT.pt strictly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: find `scaled`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import json

import torch

from scaled.config import PretrainConfig
from scaled.errors import UserError

TORCHVISION_TWINS = {"resnet50": "resnet50", "resnet18": "resnet18"}


def build_line(cfg: PretrainConfig, in_channels: int) -> str:
    """The one Python line that builds a module whose `load_state_dict(OUT.pt)` is strict."""
    twin = TORCHVISION_TWINS.get(cfg.arch)
    if twin and in_channels == 3:
        return f"m = torchvision.models.{twin}(); m.fc = torch.nn.Identity()"
    if cfg.arch == "resnet50x2":
        return (
            "from scaled.model import ResNetBackbone; from torchvision.models.resnet import "
            "Bottleneck; m = ResNetBackbone(Bottleneck, [3, 4, 6, 3], width_mult=2.0, "
            f"in_channels={in_channels})"
        )
    if cfg.arch == "resnet50":
        return (
            "from scaled.model import ResNetBackbone; from torchvision.models.resnet import "
            f"Bottleneck; m = ResNetBackbone(Bottleneck, [3, 4, 6, 3], in_channels={in_channels})"
        )
    if cfg.arch == "resnet18":
        return (
            "from scaled.model import ResNetBackbone; from torchvision.models.resnet import "
            f"BasicBlock; m = ResNetBackbone(BasicBlock, [2, 2, 2, 2], in_channels={in_channels})"
        )
    return (
        "from scaled.model import ResNetBackbone; from torchvision.models.resnet import "
        f"BasicBlock; m = ResNetBackbone(BasicBlock, [{cfg.small_blocks}] * 4, "
        f"width_mult={cfg.width / 64!r}, small_stem=True, stem_stride={cfg.stem_stride}, "
        f"in_channels={in_channels})"
    )


def backbone_state_dict(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's tensors, float32, contiguous, detached; `fc` (an Identity) has none."""
    return {k: v.detach().float().contiguous().clone() for k, v in backbone.state_dict().items()}


def export_inputs(checkpoint: str | os.PathLike) -> dict[Path, str]:
    """The files `export` reads ({path: what it is}), found without reading them: the checkpoint
    file, or every checkpoint of a run folder (the newest readable one is exported)."""
    from scaled.checkpoint import list_checkpoints

    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        return {p: "a checkpoint of the run being exported" for p in list_checkpoints(checkpoint)}
    return {checkpoint: "the checkpoint being exported"}


def export(checkpoint: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write OUT.pt (state dict) and OUT.json (how to build the module); returns the JSON.

    Both outputs are checked before the checkpoint is read: writable, and neither of them the
    input (`check_writable`). Both are written atomically (a full disk leaves the previous
    files intact: RunError with exit status 4).
    """
    from scaled.checkpoint import (
        atomic_save,
        atomic_write_text,
        checkpoint_shapes,
        find_checkpoint,
        load_backbone,
    )
    from scaled.lifecycle import EXIT_WRITE, RunError, check_writable, report_stale_temporaries

    out = Path(out)
    if out.suffix != ".pt":
        raise UserError(f"output {out} must end in .pt; pass e.g. backbone.pt")
    meta = out.with_suffix(".json")
    inputs = export_inputs(checkpoint)
    check_writable(out, "output", inputs)
    check_writable(meta, "output", inputs)
    report_stale_temporaries(out.parent, {out.name, meta.name})
    path, ckpt = find_checkpoint(checkpoint)
    cfg, backbone = load_backbone(path, ckpt=ckpt)
    in_channels, _ = checkpoint_shapes(ckpt)
    info = {
        "checkpoint": str(path),
        "step": int(ckpt.get("step", -1)),
        "method": cfg.method,
        "arch": cfg.arch,
        "in_channels": in_channels,
        "num_features": int(backbone.num_features),
        "torchvision": TORCHVISION_TWINS.get(cfg.arch) if in_channels == 3 else None,
        "build": build_line(cfg, in_channels),
        "load": f"m.load_state_dict(torch.load({str(out)!r}))",
        "input": "RGB, ImageNet mean/std normalised" if in_channels == 3 else "grey digits",
    }
    for target, write in (
        (out, lambda: atomic_save(backbone_state_dict(backbone), out)),
        (meta, lambda: atomic_write_text(json.dumps(info, indent=2) + "\n", meta)),
    ):
        existed = target.exists()
        try:
            write()
        except (OSError, RuntimeError) as err:  # torch's zip writer: RuntimeError on a full disk
            from scaled.lifecycle import write_failure

            kept = f"the previous {target} is intact" if existed else f"no {target} was written"
            raise RunError(
                EXIT_WRITE, f"could not write {target} ({write_failure(err, str(out.parent))}); "
                f"{kept}; free space or pass another output path",
            ) from None  # fmt: skip
    return info


def main(argv: list[str] | None = None) -> int:
    """Console entry point `minc-export`; returns the exit status (0, 2 user error, 4 a write
    failed)."""
    from scaled.lifecycle import RunError

    parser = argparse.ArgumentParser(
        prog="minc-export",
        description="Write the backbone of a pretrain.py checkpoint as a plain state dict "
        "(OUT.pt) and how to build its module (OUT.json). resnet50 loads into "
        "torchvision.models.resnet50() with fc replaced by torch.nn.Identity(). "
        "Exit status: 0 done, 2 user error, 4 a write failed (the previous files are intact).",
    )
    parser.add_argument("checkpoint", help="ckpt_*.pt file or run folder (newest checkpoint)")
    parser.add_argument("out", help="output state dict, e.g. backbone.pt (never the input)")
    args = parser.parse_args(argv)
    try:
        info = export(args.checkpoint, args.out)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    print(f"wrote {args.out} ({info['arch']}, {info['num_features']} features); load it with:")
    print("  import torch, torchvision")
    print(f"  {info['build']}")
    print(f"  {info['load']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
