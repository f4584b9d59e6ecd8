#!/usr/bin/env python3
"""Exit statuses of every coemu command and benchmark (docs/architecture.md,
Errors): 0 done (and --help), 1 a failure at run time, 2 a usage error
printed as "coemu NAME: error: MSG" and "(coemu NAME --help for usage)".
The commands and benchmarks are read from pipeline/cmd/commands.def and
pipeline/bench/benches.def, so a new one is covered without editing this
file. Env: COEMU (binary), COEMU_SOURCE_ROOT."""
import os
import re
import subprocess
import sys
import tempfile

COEMU = os.environ.get("COEMU", "build/pipeline/coemu")
ROOT = os.environ.get("COEMU_SOURCE_ROOT", ".")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pycheck import check, report  # noqa: E402

CRASH = ("Traceback", "Sanitizer", "runtime error:", "Segmentation fault", "core dumped", "Abort")


def names(path, macro):
    text = open(os.path.join(ROOT, path)).read()
    return re.findall(r"^%s\((\w+)," % macro, text, re.M)


COMMANDS = names("pipeline/cmd/commands.def", "COEMU_CMD")
BENCHES = ["bench " + b for b in names("pipeline/bench/benches.def", "COEMU_BENCH")]
check(len(COMMANDS) >= 10 and "verify" in COMMANDS and len(BENCHES) >= 5,
      f"commands {COMMANDS}, benchmarks {BENCHES} read from the .def files")


def run(name, *args):
    p = subprocess.run([COEMU, *name.split(), *map(str, args)], capture_output=True, text=True,
                       timeout=60)
    return p.returncode, p.stdout, p.stderr


def sane(what, rc, err):
    check(rc >= 0 and not any(c in err for c in CRASH), f"{what}: no crash (rc {rc}): {err[-500:]!r}")


def usage_error(name, args, *needles):
    """`coemu NAME ARGS` is a usage error: status 2, the message and the hint."""
    what = f"coemu {name} {' '.join(map(str, args))}"
    rc, out, err = run(name, *args)
    sane(what, rc, err)
    ok = (rc == 2 and err.startswith(f"coemu {name}: error: ")
          and f"\n(coemu {name} --help for usage)\n" in err and out == ""
          and all(n in err for n in needles))
    check(ok, f"{what}: status {rc} (expected 2), stdout {out[:200]!r}, stderr {err!r}, "
              f"expected {needles}")


def failure(name, args, *needles):
    """`coemu NAME ARGS` fails at run time: status 1, the message, no usage hint."""
    what = f"coemu {name} {' '.join(map(str, args))}"
    rc, out, err = run(name, *args)
    sane(what, rc, err)
    check(rc == 1 and f"coemu {name}: error: " in err and "--help for usage" not in err
          and all(n in err for n in needles),
          f"{what}: status {rc} (expected 1), stderr {err!r}, expected {needles}")


# Every command and benchmark: --help, an unknown option, too many arguments.
for name in COMMANDS + BENCHES:
    rc, out, err = run(name, "--help")
    sane(f"{name} --help", rc, err)
    check(rc == 0 and out.startswith(f"usage: coemu {name}") and err == "",
          f"coemu {name} --help: status {rc}, stdout {out[:200]!r}, stderr {err[:300]!r}")
    usage_error(name, ["--no-such-option"], "unknown option '--no-such-option'")
    usage_error(name, ["--no-such-option=1"], "unknown option '--no-such-option=1'")
    if name != "bench":  # its first argument is the target
        usage_error(name, [f"arg{i}" for i in range(9)])

# Commands with a fixed number of arguments: one too few and one too many
# (required options given, so that the count is what is wrong).
tmp = tempfile.mkdtemp(prefix="coemu_cli_exit.")
FIXED = {  # name: (number of arguments, required options)
    "keygen": (1, []), "serve": (1, []), "verify": (1, []), "inspect": (1, []),
    "sample": (1, ["--out", tmp]), "stats": (1, []), "train": (1, []), "eval": (2, []),
    "export": (1, ["--format", "ckpt"]),
}
for name, (count, req) in FIXED.items():
    check(name in COMMANDS, f"{name} is a command")
    usage_error(name, [*req, *[f"a{i}" for i in range(count - 1)]], "expected ", f"got {count - 1}")
    usage_error(name, [*req, *[f"a{i}" for i in range(count + 1)]], f"unexpected argument 'a{count}'",
                f"got {count + 1}")
usage_error("generate", ["a.yaml", "b.yaml"], "unexpected argument 'b.yaml'")
usage_error("synth", ["-n", 1, "--seed", 1, "--out", tmp, "extra"], "unexpected argument 'extra'")

# Missing required options, malformed values, values the command rejects.
usage_error("synth", ["--seed", 1, "--out", tmp], "option --n is required")
usage_error("synth", ["-n", "x", "--seed", 1, "--out", tmp], "--n: 'x' is not an integer")
usage_error("synth", ["-n", 0, "--seed", 1, "--out", tmp], "-n 0")
usage_error("sample", ["m.dat"], "option --out is required")
usage_error("sample", ["m.dat", "--out", tmp, "--sampler", "nope"], "haar")
usage_error("sample", ["m.dat", "--out", tmp, "--k", 0], "--k 0: expected 1..16")
usage_error("sample", ["m.dat", "--out", tmp, "--compat", "--n", 8], "do not go with --compat")
usage_error("solve", ["--example=abc", "--out", os.path.join(tmp, "x.npy")], "--example=abc")
usage_error("solve", ["--example", 8], "nothing to write")
usage_error("serve", ["d", "--ranks", 0], "--ranks 0: expected 1..65535")
usage_error("serve", ["d", "--read-threads", 99], "--read-threads 99: expected 0..")
usage_error("serve", ["d", "--epochs", -5], "--epochs -5: expected >= 0")
usage_error("serve", ["d", "--batch", -1], "--batch -1: expected >= 0")
usage_error("serve", ["d", "--split", "bogus"], "--split", "expected train, validation, test or all")
usage_error("eval", ["c", "d", "--split", "bogus"], "--split", "expected train, validation, test or all")
usage_error("serve", ["d", "--timeout", "soon"], "'soon' is not a finite number")
# a real option out of range is refused, naming it, as the integer ones are
# (they were replaced by their defaults without a word: --idle-exit -5 served
# with "idle exit after 600 s")
usage_error("serve", ["d", "--timeout", 0], "--timeout 0: expected > 0")
usage_error("serve", ["d", "--heartbeat", -1], "--heartbeat -1: expected > 0")
usage_error("serve", ["d", "--idle-exit", -5], "--idle-exit -5: expected >= 0 (0: never)")
usage_error("serve", ["d", "--model-cache", -5], "--model-cache -5: expected > 0")
usage_error("serve", ["d", "--producer-timeout", 0], "--producer-timeout 0: expected > 0")
usage_error("serve", ["d", "--live-orphan-exit", -1], "--live-orphan-exit -1: expected >= 0")
usage_error("serve", ["d", "--live-orphan-exit", 5], "--live-orphan-exit goes with --live")
usage_error("serve", ["d", "--endpoint", "tcp://127.0.0.1:99999"], "port '99999': expected tcp://")
usage_error("serve", ["d", "--endpoint", "localhost:5615"], "'localhost:5615': expected tcp://HOST:PORT")
usage_error("stats", ["d", "--split", "bogus"], "--split")
usage_error("train", ["job.yaml", "--max-steps", -1], "--max-steps -1: expected >= 0 (0: no limit)")
usage_error("train", ["job.yaml", "--time-limit", -1], "--time-limit -1: expected >= 0")
usage_error("train", ["job.yaml", "--quiet=yes"], "option --quiet takes no value")
usage_error("eval", ["c", "d", "--threads", -1], "--threads -1: expected >= 0")
usage_error("inspect", ["m.dat", "--n", 0], "--n 0: expected 1..4096")
usage_error("inspect", ["m.dat", "--edge", -1], "--edge -1: expected >= 0")
usage_error("synth", ["-n", 1, "--seed", 1, "--out", tmp, "--base-nx", 0], "--base-nx 0: expected 1..4096")
usage_error("serve", [os.path.join(ROOT, "jobs", "demo.yaml"), "--generate", "--model-cache", 0],
            "--model-cache 0: expected > 0")
usage_error("eval", ["c", "d", "--batch"], "option --batch needs a value")
usage_error("export", ["m.ckpt"], "option --format is required")
usage_error("export", ["m.ckpt", "--format", "onnx"], "--format must be safetensors, ckpt or fits")
usage_error("export", ["m.ckpt", "--format", "safetensors", "--sample", 1], "go with --format fits")
usage_error("export", ["d", "--format", "fits"], "needs --sample")
usage_error("export", ["d", "--format", "fits", "--sample", 0, "--distance", -1], "--distance")
usage_error("export", ["d", "--format", "ckpt", "--dataset", "d"], "--dataset goes with")
usage_error("export", ["a.ckpt", "--format", "safetensors", "--out", "a.ckpt"], "overwrite SOURCE")
# another spelling of the same file (it must exist to be the same file)
same = os.path.join(tmp, "same.ckpt")
open(same, "w").close()
usage_error("export", [same, "--format", "safetensors", "--out", os.path.join(tmp, ".", "same.ckpt")],
            "overwrite SOURCE")
os.remove(same)
usage_error("bench", [], "expected a TARGET")
usage_error("bench", ["no-such-target"], "unknown target 'no-such-target'")
usage_error("bench synth", ["-n", 0], "-n 0")
# a value out of range names that option and its range, not every
# constraint of the command (cli_check_ranges): one option in the message
for name, args, *needles in (
        ("bench train", ["--batch", 1, "--iters", 1], "--batch 1: expected 2..4096"),
        ("bench train", ["--nfreq", 65], "--nfreq 65: expected 1..64"),
        ("bench isotropy", ["--n", 3], "--n 3: expected 4..256"),
        ("bench stream", ["--samples", 0], "--samples 0: expected >= 16"),
        ("bench stream", ["--transport", "udp"], "--transport udp: expected tcp, ipc or all"),
        ("bench order", ["--ranks", 0], "--ranks 0: expected 1..65535"),
        ("bench order", ["--handles", 0], "--handles 0: expected >= 1"),
        ("bench solver", ["--size", 0], "--size 0: expected 2..512"),
        ("bench serve", ["d", "--credit", 0], "--credit 0: expected 1..1024"),
        ("bench serve", ["d", "--transport", "udp"], "--transport udp: expected tcp or ipc"),
        ("bench sample", ["--repeat", 0], "--repeat 0: expected 1..1000"),
        ("bench lvg", ["--index", -1], "--index -1: expected >= 0"),
        ("eval", ["c", "d", "--batch", 0], "--batch 0: expected 1..4096"),
        # counts in 1e8 notation: range-checked as typed, before any allocation
        ("bench stats", ["--n-moments", "1e20"], "--n-moments 1e20: expected a whole number 1..",
         "1e20 float32 values take 4e+20 bytes, over the allocation limit"),
        ("bench stats", ["--n-moments", -5], "--n-moments -5: expected a whole number 1.."),
        ("bench stats", ["--n-chunk", 2.5], "--n-chunk 2.5: expected a whole number"),
        ("bench stats", ["--n-median", "many"], "--n-median many: not a number")):
    usage_error(name, args, *needles)
    msg = run(name, *args)[2].split("\n")[0]
    check(len(re.findall(r"--[a-z]", msg)) == 1, f"coemu {name} {args}: one option named: {msg!r}")
usage_error("bench solver", ["--cubes", "amr"], "--cubes amr: expected random, example or HDF5 files")

# Failures at run time: status 1.
missing = os.path.join(tmp, "nonexistent")
failure("verify", [missing], missing + ": no such dataset folder")
failure("inspect", [missing + ".dat"], missing + ".dat: no such file or folder")
# a folder whose job has not finished is named as such, not as a broken file
unfinished = os.path.join(tmp, "unfinished")
os.makedirs(os.path.join(unfinished, "shards"))
for cmd in ("verify", "inspect"):
    failure(cmd, [unfinished], "unfinished is not a finished dataset: no dataset.h5 yet, 0 shards")
os.rmdir(os.path.join(unfinished, "shards"))
os.rmdir(unfinished)
failure("generate", [missing + ".yaml", "--check"], missing)
failure("train", [missing + ".yaml", "--check"], missing)
failure("generate", [tmp, "--check"], tmp + ": is a folder, expected a file")
failure("export", [missing + ".ckpt", "--format", "safetensors"], missing)
failure("export", [missing + ".safetensors", "--format", "ckpt"], missing)
failure("export", [missing, "--format", "fits", "--sample", 0], missing)
failure("bench sample", ["--model", missing + ".dat", "--reps", 1], missing)
# bench serve has no --live: its hint names the command that has (serve's own
# hint, "serve a running job with --live", sent users to an unknown option)
failure("bench serve", [missing], missing + ": no such dataset folder", "`coemu serve DIR --live`")
check("with --live" not in run("bench serve", missing)[2], "bench serve: no hint to its own --live")

# The dispatcher: no command and an unknown command are usage errors.
for args in ([], ["no-such-command"]):
    p = subprocess.run([COEMU, *args], capture_output=True, text=True, timeout=60)
    check(p.returncode == 2 and "usage: coemu COMMAND" in p.stderr,
          f"coemu {' '.join(args)}: status {p.returncode}")
p = subprocess.run([COEMU, "--help"], capture_output=True, text=True, timeout=60)
check(p.returncode == 0 and all(c in p.stdout for c in COMMANDS), "coemu --help lists every command")
os.rmdir(tmp)
report()
