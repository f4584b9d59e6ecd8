#!/usr/bin/env python3
"""The layering rule: a stage knows nothing of the stages after it.

Every quoted include names its folder ("solver/lte.h"). The rooms form layers;
a file may include headers of its own room and of rooms in earlier layers,
never of a later layer or of another room of its own layer. This test reads
every C/CUDA source and header of the tree and fails on the first include
that breaks the rule, or that does not name a folder."""
import os
import re
import sys

LAYERS = [
    ["common"],
    ["solver", "rotate", "stats"],
    ["trainer"],
    ["pipeline/mpi", "pipeline/stream"],
    ["pipeline/job"],
    ["pipeline/dataset"],
    ["pipeline/serve", "pipeline/generate"],
    ["pipeline/train"],
    ["pipeline/bench"],
    ["pipeline/cmd"],
    ["pipeline/main"],
]
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}
INC = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def room_of(path):
    """The room of a path relative to the root: 'pipeline/job', 'solver', ..."""
    parts = path.split("/")
    if parts[0] == "pipeline" and len(parts) > 2:
        return "pipeline/" + parts[1]
    return parts[0] if len(parts) > 1 else None


def check(root):
    """The problems of the tree at root, and the number of files read."""
    problems, files = [], 0
    for top in ["common", "solver", "rotate", "stats", "trainer", "pipeline"]:
        for d, _, names in os.walk(os.path.join(root, top)):
            for n in sorted(names):
                if not re.search(r"\.(c|h|cu|cuh|def)$", n):
                    continue
                rel = os.path.relpath(os.path.join(d, n), root)
                room = room_of(rel)
                if room not in LAYER:
                    problems.append(f"{rel}: room '{room}' is not in tests/layering.py's LAYERS")
                    continue
                files += 1
                text = open(os.path.join(d, n), encoding="utf-8").read()
                for m in INC.finditer(text):
                    inc, line = m.group(1), text.count("\n", 0, m.start()) + 1
                    if "/" not in inc:
                        problems.append(f'{rel}:{line}: #include "{inc}" does not name its folder')
                        continue
                    target = room_of(inc)
                    if target == room:
                        continue
                    if target not in LAYER:
                        problems.append(f'{rel}:{line}: #include "{inc}": unknown room {target}')
                    elif LAYER[target] >= LAYER[room]:
                        why = "a later layer" if LAYER[target] > LAYER[room] else "a room of the same layer"
                        problems.append(f'{rel}:{line}: {room} includes "{inc}" from {why} ({target})')
    return problems, files


def self_test():
    """The checker itself must catch each kind of fault: a stage including a
    later one, a room including a sibling, an include without a folder."""
    import tempfile
    with tempfile.TemporaryDirectory() as t:
        def put(rel, text):
            os.makedirs(os.path.dirname(os.path.join(t, rel)), exist_ok=True)
            with open(os.path.join(t, rel), "w") as f:
                f.write(text)
        put("common/a.h", '#include "pipeline/cmd/commands.h"\n')
        put("solver/b.c", '#include "rotate/model.h"\n#include "common/error.h"\n')
        put("pipeline/job/c.c", '#include "lte.h"\n#include "pipeline/job/c.h"\n')
        put("pipeline/main/d.c", '#include "pipeline/cmd/commands.h"\n#include "trainer/nn.h"\n')
        problems, files = check(t)
        want = ["common/a.h:1", "solver/b.c:1", "pipeline/job/c.c:1"]
        ok = files == 4 and len(problems) == 3 and all(
            any(p.startswith(w) for p in problems) for w in want)
        if not ok:
            print("layering: self-test: the checker missed a fault: " + repr(problems))
        return ok


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("COEMU_SOURCE_ROOT", ".")
    if not self_test():
        print("0 passed, 1 failed")
        return 1
    problems, files = check(root)
    for p in problems:
        print("layering: " + p)
    print(f"layering: {files} files checked, {len(problems)} problems")
    print(f"{1 if not problems else 0} passed, {1 if problems else 0} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
