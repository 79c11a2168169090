"""Deterministic inputs for the PySpark programs: `make_input.py <kind> <dir>`.

- `text`: lines of words in 3 files (word count).
- `events`: JSON lines {"timestamp", "line"} in 4 files, the last with late events (windowed
  word counts, watermark).
"""

import json
import os
import random
import sys

WORDS = ["owl", "cat", "dog", "fox", "emu", "yak"]


def write(path, lines, n):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path))
    with open(tmp, "w") as f:
        f.writelines(line + "\n" for line in lines)
    # the n-th file is the n-th to arrive: modification times a second apart, so both engines
    # take them in this order (one file per batch)
    os.utime(tmp, (1714564800 + n, 1714564800 + n))
    os.rename(tmp, path)


def main(kind, out):
    os.makedirs(out, exist_ok=True)
    rnd = random.Random(11)
    if kind == "text":
        for i in range(3):
            lines = [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 6))) for _ in range(20)]
            write(os.path.join(out, "part-%d.txt" % i), lines, i)
    elif kind == "events":
        for i in range(4):
            lines = []
            for _ in range(25):
                minute = i * 12 + rnd.randint(0, 11)
                if i == 3 and rnd.random() < 0.3:
                    minute = rnd.randint(0, 30)  # late
                ts = "2024-05-01T12:%02d:%02dZ" % (minute, rnd.randint(0, 59))
                words = " ".join(rnd.choice(WORDS[:4]) for _ in range(rnd.randint(1, 3)))
                lines.append(json.dumps({"timestamp": ts, "line": words}))
            write(os.path.join(out, "part-%d.json" % i), lines, i)
    else:
        raise SystemExit("unknown kind %s" % kind)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
