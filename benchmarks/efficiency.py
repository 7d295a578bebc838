"""Efficiency against the machine's peak, per model x frontend at 512x512, float32 and mixed_bfloat16.

    python benchmarks/efficiency.py                 # every row not yet measured on this machine
    python benchmarks/efficiency.py --models DeepLabV3_plus --frontends Xception ResNet50
    python benchmarks/efficiency.py --render-only   # rewrite docs/BENCHMARKS.md from the JSON

Rows: every registered model on its default frontend, plus DeepLabV3_plus and
DeepLabV3 on every frontend (``--models`` / ``--frontends`` filter them; ``none``
selects the models with their own encoder). Per row and precision: parameters and
forward GFLOPs per image (``semseg_suite.flops``), inference ms and images/s (batch
1, a ``tf.function`` call), training images/s (the suite's ``Trainer`` step, batch
2 or ``--train-batch``, forward + backward + update), achieved GFLOP/s and its share
of the machine's theoretical and measured peaks (``benchmarks/peak.py``) of the
precision's compute dtype. The two precisions of a model are built together, warmed
up and timed in alternation; times are medians.

Resumable: each measured row is stored in ``--cache`` (JSON) under (model,
frontend, precision, machine) as soon as it is done, and rows already there are
skipped (``--redo`` measures them again), so a long run can be stopped and
continued. The Markdown section of ``--output`` between the efficiency markers is
regenerated from the whole JSON after every row; the rest of the file is kept.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import semseg_suite  # noqa: E402
from benchmarks import peak, train_speed  # noqa: E402
from semseg_suite.flops import count_flops  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 512
PRECISIONS = ("float32", "mixed_bfloat16")
COMPUTE_DTYPE = train_speed.COMPUTE_DTYPE
TRAIN_BATCH = 2
TRAIN_FLOPS_PER_FORWARD = train_speed.TRAIN_FLOPS_PER_FORWARD
START, END = "<!-- efficiency:start -->", "<!-- efficiency:end -->"
EVERY_FRONTEND = ("DeepLabV3_plus", "DeepLabV3")  # models measured on every frontend
OWN_ENCODER = "none"  # --frontends value selecting the models with their own encoder


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=semseg_suite.list_models(), help="only these models")
    parser.add_argument("--frontends", nargs="+", choices=[*semseg_suite.list_frontends(), OWN_ENCODER],
                        help=f"only rows on these frontends ({OWN_ENCODER}: models with their own encoder)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--num-classes", type=int, default=21, help="classes (default: 21, as docs/MODELS.md)")
    parser.add_argument("--infer-rounds", type=int, default=10, help="timed inference calls per precision")
    parser.add_argument("--train-rounds", type=int, default=5, help="timed training steps per precision")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls and steps per precision first")
    parser.add_argument("--train-batch", type=int, default=TRAIN_BATCH,
                        help=f"training batch (default: {TRAIN_BATCH}; the table marks rows measured with another, "
                             "e.g. 1 for full-resolution models whose batch of 2 does not fit in memory)")
    parser.add_argument("--peak-size", type=int, default=2048,
                        help="side of the matmuls timed with the inference calls (default: 2048)")
    parser.add_argument("--cache", default=str(ROOT / "docs" / "benchmarks_efficiency.json"), help="JSON of rows")
    parser.add_argument("--output", default=str(ROOT / "docs" / "BENCHMARKS.md"), help="Markdown file to update")
    parser.add_argument("--redo", action="store_true", help="measure rows again even when cached")
    parser.add_argument("--render-only", action="store_true", help="measure nothing; regenerate the Markdown")
    return parser.parse_args(argv)


def table_rows(models=None, frontends=None) -> list[tuple[str, str | None]]:
    """(model, frontend) pairs: every model on its default frontend (None: own encoder),
    then DeepLabV3_plus and DeepLabV3 on every frontend, filtered, without repeats."""
    pairs = [(name, semseg_suite.default_frontend(name)) for name in semseg_suite.list_models()]
    pairs += [(name, frontend) for name in EVERY_FRONTEND for frontend in semseg_suite.list_frontends()]
    pairs = list(dict.fromkeys(pairs))
    if models:
        pairs = [pair for pair in pairs if pair[0] in models]
    if frontends:
        pairs = [pair for pair in pairs if (pair[1] or OWN_ENCODER) in frontends]
    return pairs


def row_key(model: str, frontend: str | None, precision: str, machine: str) -> str:
    return f"{model}|{frontend or OWN_ENCODER}|{precision}|{machine}"


def load_cache(path: pathlib.Path) -> dict:
    """The JSON cache, or an empty one."""
    if not path.exists():
        return {"machines": {}, "rows": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SystemExit(f"{path}: not valid JSON ({error}); delete it or pass another --cache") from None


def save_rows(path: pathlib.Path, machine: str, entry: dict, rows: dict) -> dict:
    """Adds ``rows`` and the ``machine`` entry to the cache file, written atomically; returns the cache.

    The file is read again first, so rows that another run of this script saved
    meanwhile are kept; a kill mid-write keeps the previous file.
    """
    cache = load_cache(path)
    cache["machines"][machine] = entry
    cache["rows"].update(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
    os.replace(partial, path)
    return cache


def machine_entry(cpu: peak.CpuInfo) -> dict:
    """What the table header says about a machine: its theoretical peaks and where they come from."""
    uarch = peak.identify_microarchitecture(cpu)
    theoretical = peak.theoretical_peaks(cpu, uarch)
    return {
        "microarchitecture": uarch.name,
        "fma_source": uarch.source,
        "clock": f"{cpu.clock_ghz:.3f} GHz, from {cpu.clock_source}",
        "has_amx": "amx_bf16" in cpu.flags,
        "theoretical": {dtype: value.gflops for dtype, value in theoretical.items()},
        "formula": {dtype: value.formula for dtype, value in theoretical.items()},
    }


def measure_pair(model, frontend, precisions, args) -> dict[str, dict]:
    """Builds ``model`` on ``frontend`` in each precision and times them in alternation.

    Returns:
        precision -> row fields (params, GFLOPs, inference ms and images/s,
        training images/s, seconds spent).
    """
    start = time.perf_counter()
    keras.backend.clear_session()
    variants = {
        precision: train_speed.build_variant(
            model, frontend, precision, num_classes=args.num_classes, input_shape=(SIZE, SIZE, 3)
        )
        for precision in precisions
    }
    image = train_speed.random_batch(1, SIZE, args.num_classes)[0]
    batch = train_speed.random_batch(args.train_batch, SIZE, args.num_classes)
    dtypes = sorted({COMPUTE_DTYPE[p] for p in precisions})
    calls = {("infer", p): (lambda v=v: v.infer(image)) for p, v in variants.items()}
    calls.update({("matmul", dtype): peak.matmul_call(dtype, args.peak_size) for dtype in dtypes})
    seconds = train_speed.alternate(calls, args.infer_rounds, args.warmup)
    measured_peaks = {dtype: 2 * args.peak_size**3 / seconds[("matmul", dtype)] / 1e9 for dtype in dtypes}
    train = train_speed.alternate(
        {p: (lambda v=v: v.train_step(batch)) for p, v in variants.items()}, args.train_rounds, args.warmup
    )
    rows = {}
    for precision, variant in variants.items():
        rows[precision] = {
            "params": variant.inference.count_params(),
            "gflops": count_flops(variant.inference) / 1e9,
            "infer_ms": 1000 * seconds[("infer", precision)],
            "infer_ips": 1 / seconds[("infer", precision)],
            "train_ips": args.train_batch / train[precision],
            "train_batch": args.train_batch,
            "measured_peaks": measured_peaks,
        }
    seconds = time.perf_counter() - start
    for row in rows.values():
        row["seconds_for_pair"] = seconds
    return rows


def measure_all(args, cache_path: pathlib.Path, command: str) -> list[str]:
    """Measures every selected row missing from the cache, saving and rendering after each pair.

    Returns:
        "model / frontend: error" for each pair that failed; the others are measured.
    """
    cpu = peak.read_cpu_info()
    machine, entry = peak.machine_key(cpu), machine_entry(cpu)
    cached = load_cache(cache_path)["rows"]
    todo = []
    for model, frontend in table_rows(args.models, args.frontends):
        missing = [p for p in args.precisions if args.redo or row_key(model, frontend, p, machine) not in cached]
        if missing:
            todo.append((model, frontend, missing))
    if not todo:
        print("Every selected row is cached; nothing to measure.", file=sys.stderr)
    failures = []
    for index, (model, frontend, precisions) in enumerate(todo, 1):
        name = f"{model} / {frontend or 'own encoder'}"
        load = os.getloadavg()[0]
        try:
            rows = measure_pair(model, frontend, precisions, args)
        except (tf.errors.OpError, ValueError, RuntimeError) as error:  # one bad model must not stop a long run
            failures.append(f"{name}: {type(error).__name__}: {str(error).splitlines()[0]}")
            print(f"[{index}/{len(todo)}] FAILED {failures[-1]}", file=sys.stderr, flush=True)
            continue
        for precision, row in rows.items():
            row.update(
                model=model, frontend=frontend, precision=precision, machine=machine, load=load,
                peak_size=args.peak_size, num_classes=args.num_classes, command=command, tensorflow=tf.__version__,
                keras=keras.__version__, date=datetime.date.today().isoformat(),
            )
        keyed = {row_key(model, frontend, precision, machine): row for precision, row in rows.items()}
        cache = save_rows(cache_path, machine, entry, keyed)
        write_section(pathlib.Path(args.output), render(cache))
        seconds = next(iter(rows.values()))["seconds_for_pair"]
        print(f"[{index}/{len(todo)}] {name} ({', '.join(precisions)}): {seconds:.0f} s", file=sys.stderr, flush=True)
    return failures


def _percent(value: float, reference: float) -> str:
    return f"{100 * value / reference:.0f}%"


def render_row(row: dict, machine: dict, float32_row: dict | None) -> str:
    """One Markdown table row."""
    dtype = COMPUTE_DTYPE[row["precision"]]
    theoretical, measured = machine["theoretical"][dtype], row["measured_peaks"][dtype]
    infer_gflops = row["gflops"] * row["infer_ips"]
    train_gflops = TRAIN_FLOPS_PER_FORWARD * row["gflops"] * row["train_ips"]
    speedup = ""
    if row["precision"] != "float32" and float32_row is not None:
        speedup = (f"{row['infer_ips'] / float32_row['infer_ips']:.2f}x / "
                   f"{row['train_ips'] / float32_row['train_ips']:.2f}x")
    cells = [
        row["model"], row["frontend"] or "own encoder", row["precision"], f"{row['params'] / 1e6:.2f}",
        f"{row['gflops']:.1f}", f"{row['infer_ms']:.0f}", f"{row['infer_ips']:.2f}", f"{infer_gflops:.0f}",
        _percent(infer_gflops, theoretical), _percent(infer_gflops, measured), _train_cell(row),
        f"{train_gflops:.0f}", _percent(train_gflops, theoretical), _percent(train_gflops, measured),
        speedup, f"{row['load']:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def _train_cell(row: dict) -> str:
    """Training images/s, with the batch when it is not the table's."""
    batch = row.get("train_batch", TRAIN_BATCH)
    return f"{row['train_ips']:.2f}" + ("" if batch == TRAIN_BATCH else f" (batch {batch})")


def _ordered(rows: list[dict]) -> list[dict]:
    """Rows in table order (``table_rows``, then precision), unknown pairs last."""
    order = {pair: index for index, pair in enumerate(table_rows())}
    return sorted(rows, key=lambda r: (order.get((r["model"], r["frontend"]), len(order)), r["model"],
                                       str(r["frontend"]), PRECISIONS.index(r["precision"])))


def turbo_lines(rows: list[dict], machine: dict) -> list[str]:
    """A warning when a measured float32 peak beats the theoretical one (the clock read is too low)."""
    best = max((r["measured_peaks"]["float32"] for r in rows if "float32" in r["measured_peaks"]), default=0)
    ratio = best / machine["theoretical"]["float32"]
    if ratio <= 1:
        return []
    return [f"- The fastest float32 matmul of these rows reached {best:.0f} GFLOP/s, {ratio:.0%} of the theoretical "
            "peak: the cores ran faster than the clock the system reports (turbo), so % of the theoretical peak "
            f"overstates efficiency by up to {ratio:.2f}x here; % of the measured peak does not."]


def goal_lines(rows: list[dict], machine: dict) -> list[str]:
    """Where the issue's goals stand on this machine, from the rows measured."""
    lines = []
    for row in rows:
        if row["model"] == "DeepLabV3_plus" and row["precision"] == "float32" and (
            row["frontend"] == "Xception" or str(row["frontend"]).startswith("ResNet")
        ):
            achieved = row["gflops"] * row["infer_ips"]
            share = achieved / machine["theoretical"]["float32"]
            verdict = "met" if share >= 0.65 else "not met"
            lines.append(f"- DeepLabV3_plus / {row['frontend']} float32 inference: {share:.0%} of the theoretical "
                         f"float32 peak (goal >= 65%: {verdict}); {achieved / row['measured_peaks']['float32']:.0%} "
                         "of the float32 matmul timed with it.")
    amx = "has AMX" if machine["has_amx"] else "has no AMX (the 1.8x bf16 goal is for AMX CPUs)"
    lines.append(f"- mixed_bfloat16 speedup goal (>= 1.8x where the CPU has AMX): this CPU {amx}; "
                 "see the speedup column.")
    return lines


def _peak_range(rows: list[dict], dtype: str) -> str:
    """``dtype low-high (side^2 matmul)`` over the rows that measured ``dtype``."""
    values = [r["measured_peaks"][dtype] for r in rows if dtype in r["measured_peaks"]]
    sizes = sorted({str(r["peak_size"]) for r in rows})
    if not values:
        return f"{dtype} not measured"
    return f"{dtype} {min(values):.0f}-{max(values):.0f} ({'/'.join(sizes)}^2 matmul)"


def render(cache: dict) -> str:
    """The Markdown section, from every row of the cache, one table per machine."""
    lines = [
        START,
        "## Efficiency against the machine's peak",
        "",
        "<!-- Generated by `python benchmarks/efficiency.py` from its JSON cache (default "
        "docs/benchmarks_efficiency.json); do not edit by hand. -->",
        "",
        f"Per model x frontend at {SIZE}x{SIZE}, random inputs. GFLOPs: forward, per image, 2 x the "
        "multiply-accumulates of every convolution and dense layer (`semseg_suite.flops`). Inference: batch 1, "
        "one `tf.function` call, median of the timed calls. Training: the suite's `Trainer` step, batch "
        f"{TRAIN_BATCH} (another where the cell says so), forward + backward + Adam update, median step. "
        f"Achieved GFLOP/s: inference GFLOPs x images/s; training {TRAIN_FLOPS_PER_FORWARD} x forward GFLOPs x "
        "images/s (backward = gradients of inputs "
        "and weights, each about one forward). Peaks are those of the precision's compute dtype (float32, or "
        "bfloat16 for mixed_bfloat16): theoretical from the CPU's description; measured: the median GFLOP/s of "
        "square matmuls timed in alternation with the row's inference calls, so that both see the same load "
        "(`benchmarks/peak.py` gives the best-of peak of a quiet moment). The two precisions of a model are timed "
        "in alternation; the speedup is mixed_bfloat16 over float32 images/s (inference / training). Load: the "
        "1-minute load average when the row started; it includes this script's own previous row (up to ~2 on 2 "
        "cores), so only values well above 2 mean that other work shared the machine.",
    ]
    for machine_name, machine in cache["machines"].items():
        rows = _ordered([row for row in cache["rows"].values() if row["machine"] == machine_name])
        if not rows:
            continue
        float32 = {(r["model"], r["frontend"]): r for r in rows if r["precision"] == "float32"}
        versions = sorted({f"TensorFlow {r['tensorflow']}, Keras {r['keras']}" for r in rows})
        commands = sorted({r["command"] for r in rows})
        lines += [
            "",
            f"### {machine_name}",
            "",
            f"- Microarchitecture: {machine['microarchitecture']}; FMA units: {machine['fma_source']}.",
            f"- Clock: {machine['clock']}.",
            *(f"- Theoretical {dtype} peak: {machine['theoretical'][dtype]:.0f} GFLOP/s = {machine['formula'][dtype]}."
              for dtype in peak.DTYPES),
            "- Measured peaks, median GFLOP/s of the matmuls timed with each row (lowest to highest row): "
            + "; ".join(_peak_range(rows, dtype) for dtype in peak.DTYPES) + ".",
            f"- Classes: {', '.join(sorted({str(r['num_classes']) for r in rows}))}.",
            f"- {'; '.join(versions)}; measured {min(r['date'] for r in rows)} to {max(r['date'] for r in rows)}.",
            *(f"- Command: `{command}`" for command in commands),
            *turbo_lines(rows, machine),
            *goal_lines(rows, machine),
            "",
            "| Model | Frontend | Precision | Params (M) | GFLOPs | Inference ms | Inference img/s "
            "| Inference GFLOP/s | % theoretical peak | % measured peak | Train img/s | Train GFLOP/s "
            "| % theoretical peak | % measured peak | bf16 speedup (inf / train) | Load |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *(render_row(r, machine, float32.get((r["model"], r["frontend"]))) for r in rows),
        ]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(path: pathlib.Path, section: str) -> None:
    """Replaces the text between the efficiency markers of ``path`` (appending it, or
    creating the file, when they are missing)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    elif START in text or END in text:
        raise SystemExit(f"{path}: has only one of {START} / {END}; fix the markers by hand")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv=None) -> int:
    args = parse_args(argv)
    command = peak.command_line(__file__, argv)
    cache_path = pathlib.Path(args.cache)
    failures = [] if args.render_only else measure_all(args, cache_path, command)
    section = render(load_cache(cache_path))
    write_section(pathlib.Path(args.output), section)
    print(section)
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
