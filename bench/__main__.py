"""Runs the benchmarks, prints markdown tables and writes them as JSON.

    python -m bench                                   # every section (make bench)
    python -m bench --quick                           # a smaller run (256x256 only, fewer repeats)
    python -m bench --sections=generator,data --repeats=9 --output=/tmp/results.json

Sections: generator (inference, ours vs the official graph), runtimes (TensorFlow, ONNX Runtime, OpenVINO
and LiteRT side by side with the official graph; writes the `--runtime=auto` table), int8 (int8 against
float32, dB on real photos, and 720p video frames/s end to end; writes the int8 `auto` entries), serving (the exported SavedModel),
train (train-step images/s), data (edge smoothing and the tf.data pipeline, compared with what the
GAN-phase train step consumes). Each section is the module `bench.bench_<section>` and its
`run(repeats, quick)`; a section that fails becomes an error row, the others still run and are written.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import pathlib
import platform
import sys
import time
import traceback

from absl import app, flags, logging

SECTIONS = ("generator", "runtimes", "int8", "serving", "train", "data")  # data last: it compares against train
DEFAULT_OUTPUT = pathlib.Path(__file__).resolve().parent / "results.json"

FLAGS = flags.FLAGS
flags.DEFINE_list("sections", list(SECTIONS), f"Comma-separated sections to run, from {', '.join(SECTIONS)}.")
flags.DEFINE_integer("repeats", None, "Timed repeats per case (default: each section's own; fewer with --quick).",
                     lower_bound=1)
flags.DEFINE_boolean("quick", False, "Smaller run: 256x256 only, fewer repeats and steps, no XLA timings (< 5 min).")
flags.DEFINE_string("output", str(DEFAULT_OUTPUT), "Where to write the results as JSON.")


def _as_rows(section, result):
    """A section's rows (each module's `run(repeats, quick)` returns a list of dicts), tagged with the section."""
    rows = []
    for row in result:
        row = dict(row)
        row.setdefault("case", section)
        row["section"] = section
        rows.append(row)
    return rows


def _error_row(section, message):
    return {"section": section, "case": "error", "error": message}


def train_consumption(rows):
    """Images/s the GAN-phase float32 train step consumes (256x256, batch 6), from the train rows.

    Takes the fastest float32 GAN-phase variant measured (tf.function or XLA): the pipeline must
    keep up with the fastest step we offer. None when the train section did not run or failed.
    """
    rates = [row["images_per_s"] for row in rows
             if row.get("section") == "train" and row.get("phase") == "gan" and row.get("dtype") == "float32"
             and row.get("images_per_s") is not None]
    return max(rates, default=None)


def add_train_ratio(data_rows, previous_rows):
    """The data pipeline's row gets the train step's consumption and the ratio of the two."""
    consumed = train_consumption(previous_rows)
    for row in data_rows:
        if "pipeline_images_per_s" not in row:
            continue
        if consumed:
            row["train_step_images_per_s"] = consumed
            row["pipeline_over_train_step"] = round(row["pipeline_images_per_s"] / consumed, 1)
        else:
            row["note"] = "train step rate unknown: run with the train section to get the ratio"
    return data_rows


def run_sections(sections, quick=False, repeats=None):
    """All requested sections in a fixed order; returns (rows, seconds per section)."""
    rows, seconds = [], {}
    for section in SECTIONS:
        if section not in sections:
            continue
        start = time.perf_counter()
        print(f"[bench] {section} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"bench.bench_{section}")
            result = _as_rows(section, module.run(repeats=repeats, quick=quick))
            rows.extend(add_train_ratio(result, rows) if section == "data" else result)
        except Exception as e:  # one failing section must not lose the others' numbers
            traceback.print_exc()
            rows.append(_error_row(section, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
        seconds[section] = round(time.perf_counter() - start, 1)
        print(f"[bench] {section} done in {seconds[section]} s", file=sys.stderr, flush=True)
    return rows, seconds


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown(rows):
    """One markdown table per section; columns are the union of the section's keys."""
    out = []
    for section in dict.fromkeys(r["section"] for r in rows):
        section_rows = [r for r in rows if r["section"] == section]
        columns = ["case"]
        for r in section_rows:
            columns.extend(k for k in r if k not in columns and k != "section")
        out.append(f"### {section}\n")
        out.append("| " + " | ".join(columns) + " |")
        out.append("|" + "---|" * len(columns))
        for r in section_rows:
            out.append("| " + " | ".join(_fmt(r[c]) if c in r else "" for c in columns) + " |")
        out.append("")
    return "\n".join(out)


def machine():
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
    except Exception:  # noqa: BLE001 - the header is informative only
        pass
    return info


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; use --sections, --repeats, --quick, --output.")
    unknown = [s for s in FLAGS.sections if s not in SECTIONS]
    if unknown:
        raise app.UsageError(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}.")
    logging.set_verbosity(logging.WARNING)  # TF's INFO lines (SavedModel export) would bury the tables
    start = time.perf_counter()
    rows, seconds = run_sections(set(FLAGS.sections), FLAGS.quick, FLAGS.repeats)
    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "quick": FLAGS.quick,
        "machine": machine(),
        "seconds": {**seconds, "total": round(time.perf_counter() - start, 1)},
        "rows": rows,
    }
    print(markdown(rows))
    output = pathlib.Path(FLAGS.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(tmp, output)
    print(f"results written to {output} ({results['seconds']['total']} s)")
    errors = [r for r in rows if r.get("case") == "error"]
    return 1 if errors and len(errors) == len(rows) else 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app.run(main)
