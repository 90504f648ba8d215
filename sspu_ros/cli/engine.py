"""``sspu build-engine``: build a model's TensorRT engine into the engine cache before
driving. Heavy imports (torch, TensorRT) happen inside the command, so ``sspu --help``
and the other subcommands stay fast; the engine logic is
:mod:`sspu_ros.runtime.tensorrt_backend`."""

from __future__ import annotations


def add_subcommands(sub) -> None:
    p = sub.add_parser("build-engine", help="build the TensorRT engine of a model ahead of "
                       "time (into the engine cache)")
    p.add_argument("--model", help="model name or .pt/.onnx path (default: config 'model')")
    p.add_argument("--fp16", action="store_true", help="FP16 engine (default: config "
                   "tensorrt.precision)")
    p.add_argument("--max-patches", type=int, help="largest batch of the optimization "
                   "profile (default: config tensorrt.max_patches)")
    p.add_argument("--cache-dir", help="engine cache folder (default: config "
                   "tensorrt.cache_dir, else $SSPU_ENGINE_CACHE or ~/.cache/sspu_ros/engines)")
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    p.add_argument("--config", help="ROS 2 parameter YAML overriding the defaults")
    p.set_defaults(func=cmd_build_engine, ratio=None)


def cmd_build_engine(args) -> int:
    """``sspu build-engine``: build (or find) the cached engine ahead of time."""
    import onnx

    from ..errors import ModelError
    from ..runtime.model_files import find_model_files
    from ..runtime.tensorrt_backend import EngineCache, TensorRTToolkit, engine_onnx, make_profile
    from .common import _load_config

    cfg = _load_config(args)
    precision = "fp16" if args.fp16 else cfg["tensorrt.precision"]
    max_patches = args.max_patches or cfg["tensorrt.max_patches"]
    cache_dir = args.cache_dir if args.cache_dir is not None else cfg["tensorrt.cache_dir"]
    if cfg["model"] == "midpoint":
        raise ModelError("model 'midpoint' is built in (no network, no engine); give a "
                         "trained model: sspu build-engine --model NAME|CKPT.pt|MODEL.onnx")
    files = find_model_files(cfg["model"])
    toolkit = TensorRTToolkit()
    onnx_path = engine_onnx(files, precision, cache_dir, toolkit.major)
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    patch_size = int(meta.get("sspu.patch_size", 256))
    cached = EngineCache(cache_dir, toolkit).load_or_build(
        onnx_path.read_bytes(), precision, make_profile(max_patches, patch_size),
        force=args.force)
    state = "built" if cached.built else "already cached"
    print(f"TensorRT {toolkit.version} engine ({precision}, B in [1, {max_patches}], "
          f"{patch_size}-point patches, GPU {toolkit.gpu_name()}) {state}: {cached.path}")
    print(f"key: {cached.key}")
    return 0
