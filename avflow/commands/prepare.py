"""`python -m avflow prepare --input=DIR --layout=muddy_mix|video_stems --output=DIR [--stems_dir=DIR]
[--config=configs/visah_fm.py:toy] [--text_encoder=T5_DIR] [--clip_weights=PATH] ...`.

Turns real clips into Muddy Mix training records (`avflow.data.records`): TFDS ArrayRecord under
`<output>/muddy_mix/<version>` plus `<output>/prepare_report.json`. Point `config.data.records_dir` at
`<output>` with `config.data.source = "records"` and the same sample rate, clip length and image size.

`--config` names the config that will train on the records: the sample rate, clip length and image size (and,
with `--text_encoder`, the text width and token count) are then taken from it. A geometry flag given as well must
agree with the config, else the run stops with one line naming both values (change the config with
`--config.data.<field>=...` instead). Without `--config`, the flags' defaults are the paper's geometry.
With `--text_encoder`, the records also carry T5 caption features `text` (text_tokens, text_dim) for the "T"
conditionings (`configs/visah_fm.py:<scale>_t|_vt|_vta`, `configs/visah.py:<scale>_t5`).
With `--clip_weights`, they carry CLIP image features `context` (one L2-normalised vector per frame, the public
VisAH's `frames_feats`) computed from the frames, which the conditionings on stored image features read
(`model.conditioning.kind="features"`, e.g. `configs/visah.py:paper`).
"""
import os

from absl import flags
from ml_collections import config_flags

from avflow.commands import no_arguments, parse_flags  # noqa: F401
from avflow.configs_lib import get_field
from avflow.data import records
from avflow.models import clip

config_flags.DEFINE_config_file("config", None, "The training config the records are for, e.g. "
                                "configs/visah_fm.py:toy: sets --sample_rate, --clip_seconds, --image_size, "
                                "--text_dim and --text_tokens.", lock_config=True)

flags.DEFINE_string("input", None, "Folder of clips (see --layout).", required=True)
flags.DEFINE_enum("layout", "muddy_mix", records.LAYOUTS,
                  "muddy_mix: public VisAH clip folders (audio_raw/, separated/, frames/[, frames_feats/, "
                  "frames_captions/]); "
                  "video_stems: video files plus --stems_dir/<clip>/{speech,music,effects}.wav.")
flags.DEFINE_string("output", None, "Records folder (becomes config.data.records_dir; created if missing, never "
                    "inside --input); the records are built beside it and moved in when complete.", required=True)
flags.DEFINE_string("stems_dir", None, "Stems folder for --layout=video_stems.")
flags.DEFINE_string("splits_dir", None, "Folder of train.csv / val.csv / test_filter.csv (default: --input); "
                    "without them clips are split 80/10/10 by a stable hash.")
flags.DEFINE_integer("sample_rate", None, "Record sample rate in Hz (default: the config's, else VisAH's 44100).",
                     lower_bound=1)
flags.DEFINE_float("clip_seconds", None, "Window length in seconds (default: the config's, else VisAH's 10).",
                   lower_bound=1e-3)
flags.DEFINE_float("min_seconds", None, "Shortest last piece that is zero-padded into a window rather than "
                   "dropped (default: half a window).", lower_bound=0.0)
flags.DEFINE_integer("image_size", None, "Frame size after CLIP's resize and center crop (default: the config's, "
                     "else 224).", lower_bound=1)
flags.DEFINE_bool("strict", False, "Stop at the first bad clip with a non-zero exit status.")
flags.DEFINE_bool("overwrite", False, "Replace records already in --output (they stay until the new ones are "
                  "complete).")
flags.DEFINE_string("text_encoder", None, "Local T5 encoder folder (`save_pretrained`: config, weights, tokenizer; "
                    "the paper: T5-XXL). Each clip's caption (muddy_mix: frames_captions/*.txt; video_stems: "
                    "<clip>.txt beside the video) is encoded once and stored as `text`; clips without one are "
                    "skipped and reported.")
flags.DEFINE_integer("text_dim", None, "Width the T5 encoder must have (default: the config's "
                     "model.conditioning.text_dim, else T5-XXL's 4096).", lower_bound=1)
flags.DEFINE_integer("text_tokens", None, "Tokens per caption, truncated or padded (default: the config's "
                     "model.conditioning.text_tokens, else 10).", lower_bound=1)
flags.DEFINE_string("text_device", None, "PyTorch device of the text encoder (default: cuda if available, else cpu).")
flags.DEFINE_enum("text_dtype", "float32", ["float32", "bfloat16"], "Dtype the text encoder runs in; the stored "
                  "features are float32.")
flags.DEFINE_string("clip_weights", None, "CLIP weights (a `save_pretrained` folder, or a .safetensors / .bin state "
                    "dict of the vision tower or the full CLIPModel): each frame's L2-normalised image features are "
                    "computed and stored as `context`, in place of any frames_feats.")
flags.DEFINE_enum("clip_variant", "vit_l14", list(clip.VARIANTS), "Architecture of --clip_weights (the paper: "
                  "ViT-L/14, 768-d features = config.model.latent.context_dim).")
flags.DEFINE_integer("clip_batch_size", 32, "Frames per CLIP batch.", lower_bound=1)


# flag → (config field, default without --config)
SHAPE_FLAGS = {"sample_rate": ("data.sample_rate", 44100), "clip_seconds": ("data.clip_seconds", 10.0),
               "image_size": ("data.image_size", 224), "text_dim": ("model.conditioning.text_dim", 4096),
               "text_tokens": ("model.conditioning.text_tokens", 10)}


def shapes(f) -> dict:
  """The record shapes: explicit flags, else `--config`'s fields, else the paper's; `SystemExit` on a conflict."""
  out = {}
  for name, (path, default) in SHAPE_FLAGS.items():
    given = f[name].value
    if f.config is None:
      out[name] = default if given is None else given
      continue
    wanted = get_field(f.config, path)
    if given is not None and float(given) != float(wanted):
      raise SystemExit(f"avflow prepare: --{name}={given} conflicts with config.{path}={wanted} of --config; "
                       f"drop --{name} or pass --config.{path}={given}")
    out[name] = wanted
  if f.config is not None and f.config.data.frames_per_second != records.FRAMES_PER_SECOND:
    raise SystemExit(f"avflow prepare: config.data.frames_per_second={f.config.data.frames_per_second}, but "
                     f"records hold {records.FRAMES_PER_SECOND} frame per second")
  return out


def main(argv):
  no_arguments(argv)
  f = flags.FLAGS
  shape = shapes(f)
  spec = records.WindowSpec(sample_rate=shape["sample_rate"], clip_seconds=shape["clip_seconds"],
                            min_seconds=f.min_seconds, image_size=shape["image_size"])
  try:
    report = records.prepare(f.input, f.output, f.layout, stems_dir=f.stems_dir, splits_dir=f.splits_dir,
                             spec=spec, strict=f.strict, overwrite=f.overwrite, text_encoder=f.text_encoder,
                             text_dim=shape["text_dim"], text_tokens=shape["text_tokens"],
                             text_options=dict(device=f.text_device, dtype=f.text_dtype),
                             clip_weights=f.clip_weights, clip_variant=f.clip_variant,
                             clip_batch_size=f.clip_batch_size)
  except records.PrepareError as e:
    raise SystemExit(f"avflow prepare: {e}")
  examples = ", ".join(f"{k} {v}" for k, v in report["examples"].items())
  print(f"{len(report['ok'])} clips ok, {len(report['skipped'])} skipped, {len(report['warnings'])} warnings; "
        f"windows: {examples}; report: {os.path.join(f.output, records.REPORT_FILE)}")
  if report["held_out"]:
    print(f"no val split: training holds out {', '.join(report['held_out'])} for evaluation")
